"""README.md and docs/ name only files that are in this repository (issue 16, item 7).

Two kinds of reference are checked: a Markdown link with a relative target (resolved from
the file that holds it, as GitHub does), and a repository path written in prose or code
(``scripts/demo``, ``docs/web.md``, ``tests/docs/test_snippets.py``), read from the root.
Patterns (``tests/integration/<lib>/``) are not paths and are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TOP_DIRS = ("docs", "scripts", "tests", "benchmarks", "obs_sdk", "integrations", ".ci")
_PATH = re.compile(rf"(?<![\w/.-])(?:{'|'.join(re.escape(d) for d in TOP_DIRS)})/[\w./-]*")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\)")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*:")
# Pages docs/hooks.py generates for the site: links to them are checked by mkdocs --strict.
GENERATED = {ROOT / "docs" / "index.md", ROOT / "docs" / "api-integrations.md"}


def pages() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def missing_references(page: Path) -> list[str]:
    """Return ``line: reference`` for each reference of *page* that names no file."""
    missing = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for target in _LINK.findall(line):
            resolved = (page.parent / target).resolve()
            if not _URL.match(target) and not resolved.exists() and resolved not in GENERATED:
                missing.append(f"{number}: link {target}")
        for path in _PATH.findall(line):
            if re.search(r"[<>*{}]", line[line.index(path) + len(path) :][:1]):
                continue  # a pattern such as tests/integration/<lib>/
            if not (ROOT / path.rstrip(".")).exists():
                missing.append(f"{number}: path {path}")
    return missing


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_references_name_files_of_this_repository(page: Path) -> None:
    """Every relative link and repository path in the page exists."""
    assert missing_references(page) == []


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    """The check can fail: a link and a path to nothing are both named, with their lines."""
    page = tmp_path / "page.md"
    page.write_text(
        "Run `scripts/demo` (see [the guide](guide.md)).\n"
        "Then `scripts/no-such-script`, or the `tests/integration/<lib>/` pattern.\n"
        "[SPEC](../shared/SPEC.md) and [a site](https://example.com/x.md)\n"
    )
    assert missing_references(page) == [
        "1: link guide.md",
        "2: path scripts/no-such-script",
        "3: link ../shared/SPEC.md",
    ]
