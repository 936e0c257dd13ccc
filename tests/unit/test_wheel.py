"""The built wheel ships obs_sdk with its integrations, and nothing else.

integrations/ sits at the top of the repository but must install as
``obs_sdk.integrations`` (pyproject's ``package-dir`` mapping): a top-level
``integrations`` package would claim a generic import name in users' environments.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Local state that is not part of the source tree: copying it would be slow, and a stale
# build/ or *.egg-info could hide a packaging mistake.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
)


@pytest.fixture(scope="class")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Build the wheel once from a copy of the repository; return its entry names."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy, because setuptools writes build/ and obs_sdk.egg-info/ into the source
    # tree; tests/ and benchmarks/ are copied too, so the wheel has to leave them out.
    source = tmp / "source"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    out = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


class TestWheelContents:
    """What ``python -m build --wheel`` puts in the wheel."""

    @pytest.mark.parametrize(
        "path",
        [
            "obs_sdk/__init__.py",
            "obs_sdk/py.typed",
            "obs_sdk/integrations/__init__.py",
            "obs_sdk/cli/__init__.py",
            "obs_sdk/_scope/__init__.py",
            "obs_sdk/_hotpath/__init__.py",
            "obs_sdk/_delivery/__init__.py",
            "obs_sdk/_ledger/__init__.py",
            "obs_sdk/_seals/__init__.py",
            "obs_sdk/integrations/viewer_templates/viewer.html",
        ],
    )
    def test_ships_package_files(self, wheel_names: list[str], path: str) -> None:
        """The package, its marker, the CLI, the integrations and their templates ship."""
        assert path in wheel_names

    def test_integrations_only_under_obs_sdk(self, wheel_names: list[str]) -> None:
        """No top-level ``integrations/`` package is installed."""
        assert [name for name in wheel_names if name.startswith("integrations/")] == []

    @pytest.mark.parametrize("directory", ["tests/", "benchmarks/"])
    def test_excludes_development_trees(self, wheel_names: list[str], directory: str) -> None:
        """Tests and benchmarks stay out of the wheel."""
        assert [name for name in wheel_names if name.startswith(directory)] == []

    def test_only_obs_sdk_and_metadata_at_top_level(self, wheel_names: list[str]) -> None:
        """Every entry is under ``obs_sdk/`` or the wheel's ``.dist-info`` directory."""
        top_level = {name.split("/", 1)[0] for name in wheel_names}
        packages = {name for name in top_level if not name.endswith(".dist-info")}
        assert packages == {"obs_sdk"}
