"""mkdocs hooks: the site follows the repository's files, so nothing is listed twice.

- The home page is README.md (no copy under docs/ to drift from it).
- The nav lists every docs/*.md page: the guides in reading order (``GUIDES``), then any
  page not named there, alphabetically, so a new page is on the site without an edit here.
- "API reference: integrations" documents every public module of integrations/.
- Links are written for GitHub, relative to the file. On the site, a link into docs/ stays a
  page link (checked by ``mkdocs build --strict``); a link to another file of the repository
  (``../benchmarks/README.md``) goes to that file in the repository.
- mkdocstrings reads the source statically, and integrations/ installs as
  obs_sdk.integrations (pyproject's package-dir), which no directory shows. A temp directory
  holding links in the installed layout is where it looks instead.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [
    "web.md",
    "transactions.md",
    "query.md",
    "console.md",
    "instrument.md",
    "celery.md",
    "propagation.md",
    "performance.md",
    "architecture.md",  # for contributors: the parts and the path of a record
]
API_PAGES = ["api.md", "api-integrations.md"]
HOME, INTEGRATIONS = "index.md", "api-integrations.md"
# [text](target) and [text](target "title"); images too. Not inside code: see _links.
_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\))")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


@event_priority(100)  # before mkdocstrings reads its handler's configuration
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Set the nav from the files, and point mkdocstrings at the installed layout."""
    docs = Path(config.docs_dir)
    pages = sorted(p.name for p in docs.glob("*.md") if p.name not in (HOME, *API_PAGES))
    guides = [name for name in GUIDES if name in pages]
    guides += [name for name in pages if name not in GUIDES]
    config.nav = [
        {"Home": HOME},
        {"Guides": guides},
        {"API reference": API_PAGES},
    ]
    handlers = config.plugins["mkdocstrings"].config.handlers
    handlers.setdefault("python", {})["paths"] = [str(_installed_layout())]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the home page (README.md) and the integrations' API page."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, HOME, content=readme))
    files.append(File.generated(config, INTEGRATIONS, content=_integrations_page()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Rewrite links written for GitHub into links that work on the site."""
    docs = Path(config.docs_dir).resolve()
    source = ROOT / "README.md" if page.file.src_uri == HOME else docs / page.file.src_uri
    return _links(markdown, source.parent, docs / page.file.src_uri, docs, config.repo_url)


def _links(markdown: str, base: Path, page: Path, docs: Path, repo_url: str | None) -> str:
    """Return *markdown* with relative links resolved from *base* for a page at *page*."""

    def rewrite(match: re.Match[str]) -> str:
        target = match[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match[0]  # a URL, or absolute: mkdocs judges it
        resolved = (base / target).resolve()
        if resolved.is_relative_to(docs):
            new = Path(os.path.relpath(resolved, page.parent)).as_posix()
        elif resolved.is_relative_to(ROOT) and resolved.exists() and repo_url:
            new = f"{repo_url.rstrip('/')}/blob/main/{resolved.relative_to(ROOT).as_posix()}"
        else:
            return match[0]  # left for mkdocs to report
        return f"{match[1]}{new}{match[3]}"

    out, fence = [], None
    for line in markdown.splitlines(keepends=True):
        opened = _FENCE.match(line)
        if opened and (fence is None or opened[1].startswith(fence)):
            fence = opened[1] if fence is None else None
        out.append(line if fence or opened else _LINK.sub(rewrite, line))
    return "".join(out)


def _integrations_page() -> str:
    """One section per public module of integrations/, found on disk."""
    modules = sorted(
        p.stem for p in (ROOT / "integrations").glob("*.py") if not p.name.startswith("_")
    )
    sections = "\n\n".join(f"::: obs_sdk.integrations.{name}" for name in modules)
    return (
        "# API reference: integrations\n\n"
        "Adapters for frameworks and vendors, installed as `obs_sdk.integrations.<name>`. "
        "Each imports its library when imported and names the extra to install when it is "
        "missing; `import obs_sdk` imports none of them.\n\n" + sections + "\n"
    )


def _installed_layout() -> Path:
    """Return a temp dir whose ``obs_sdk/`` links obs_sdk's files and ``integrations/``."""
    shim = Path(tempfile.mkdtemp(prefix="obs-docs-api-"))
    atexit.register(shutil.rmtree, shim, ignore_errors=True)
    package = shim / "obs_sdk"
    package.mkdir()
    for entry in (ROOT / "obs_sdk").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "integrations").symlink_to(ROOT / "integrations")
    return shim
