"""The documentation site builds with ``mkdocs build --strict`` (issue 16, item 7).

Strict turns every mkdocs warning into a failure: a broken link between pages, a page left
out of the nav, an API object mkdocstrings cannot find or a docstring it cannot parse. The
site goes to a temp dir, never into the repository.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import obs_sdk

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site once with --strict; fail with mkdocs' own output when it does not."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner, not a warning
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return out


def _load_hooks() -> ModuleType:
    """Import docs/hooks.py (mkdocs loads it by path; it is not a package)."""
    spec = importlib.util.spec_from_file_location("obs_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anchors(page: Path) -> set[str]:
    """The ids of the API objects documented on *page*."""
    return set(re.findall(r'id="(obs_sdk[\w.]*)"', page.read_text(encoding="utf-8")))


class TestSite:
    """What the built site holds."""

    def test_the_home_page_is_the_readme(self, site: Path) -> None:
        """README.md is the home page, its links to docs/ turned into page links."""
        home = (site / "index.html").read_text(encoding="utf-8")
        assert "An audit trail, product analytics and storage metering" in home
        assert 'href="web/"' in home
        assert "docs/web.md" not in re.findall(r'href="([^"]*)"', home)

    def test_every_page_of_docs_is_on_the_site(self, site: Path) -> None:
        """Each docs/*.md is built and in the nav (strict fails on a page left out)."""
        pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
        assert pages
        home = (site / "index.html").read_text(encoding="utf-8")
        for page in pages:
            assert (site / page / "index.html").is_file(), page
            assert f'href="{page}/"' in home, f"{page} is not in the nav"

    def test_the_api_reference_covers_the_public_api(self, site: Path) -> None:
        """Every name in obs_sdk.__all__ has an entry: a name without a docstring has none."""
        documented = anchors(site / "api" / "index.html")
        missing = [name for name in obs_sdk.__all__ if f"obs_sdk.{name}" not in documented]
        assert missing == []
        assert "obs_sdk.testing.capture" in documented

    def test_every_integration_module_has_its_api_reference(self, site: Path) -> None:
        """Each public module of integrations/ is documented, found on disk (no list to edit)."""
        documented = anchors(site / "api-integrations" / "index.html")
        modules = [p.stem for p in (ROOT / "integrations").glob("*.py") if p.name[0] != "_"]
        assert modules
        for module in modules:
            assert f"obs_sdk.integrations.{module}" in documented, module


class TestLinks:
    """Links written for GitHub, relative to their file, as the site rewrites them."""

    hooks = _load_hooks()
    docs = ROOT / "docs"
    repo = "https://github.com/obs-sdk/obs-sdk"

    def test_readme_links_into_docs_become_page_links(self) -> None:
        """The home page is README.md at the root: ``docs/web.md`` is ``web.md`` there."""
        text = "See [the web guide](docs/web.md#fastapi) and [home](README.md).\n"
        out = self.hooks._links(text, ROOT, self.docs / "index.md", self.docs, self.repo)
        assert out == (
            f"See [the web guide](web.md#fastapi) and [home]({self.repo}/blob/main/README.md).\n"
        )

    def test_a_link_out_of_docs_goes_to_the_repository(self) -> None:
        """``../benchmarks/README.md`` is a file of the repository, not a page."""
        text = "[modules](../benchmarks/README.md) [web](web.md) [gone](../nowhere.md)\n"
        out = self.hooks._links(text, self.docs, self.docs / "performance.md", self.docs, self.repo)
        assert out == (
            f"[modules]({self.repo}/blob/main/benchmarks/README.md) [web](web.md) "
            "[gone](../nowhere.md)\n"  # left as it is: mkdocs --strict reports it
        )

    def test_code_is_left_alone(self) -> None:
        """A link-like text inside a fenced block is code, not a link."""
        text = "```python\nx = d[a](docs/web.md)\n```\n"
        assert self.hooks._links(text, ROOT, self.docs / "index.md", self.docs, self.repo) == text
