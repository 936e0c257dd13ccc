"""Every code block in README.md and docs/**/*.md runs as written (issue 16, item 7).

The convention, for whoever writes documentation:

- A ```` ```python ```` block is a script. It runs standalone with this venv's interpreter,
  in a fresh empty temp directory as its working directory, and must exit 0 (within
  ``TIMEOUT`` seconds). Write it so a reader can paste it into a file and run it.
- A ```` ```python ```` block right after the line ``<!-- continue -->`` continues the page's
  previous ```` ```python ```` block: the two (and any further continued blocks) run as one
  script, in order, so a page can build on names it defined earlier. The comment does not
  show on GitHub or on the site.
- A ```` ```py ```` block is a fragment, or needs something a test cannot start (a real
  PostHog project, another service): it is only compiled, so its syntax is checked. Use it
  sparingly.
- Other blocks (```` ```bash ````, ```` ```sh ````, plain ```` ``` ````) are not run; the
  repository paths that any block or link names must exist (tests/docs/test_references.py).

A script also fails when it warns (``PYTHONWARNINGS=error``, as pytest is configured) or when
the ``obs_sdk`` logger says anything at WARNING or above: obs_sdk swallows its own errors, so
a snippet whose template is wrong would otherwise exit 0 having recorded nothing. A block
that means to show such a warning says so with ``<!-- warns -->`` on the line before it
(``<!-- continue warns -->`` when it also continues).

What a script finds in its environment: ``POSTHOG_API_KEY`` and ``POSTHOG_HOST`` name a
PostHog receiver on 127.0.0.1 (tests/support/posthog_receiver.py), so a snippet can build a
real ``posthog.Posthog`` from them; ``HTTP_PROXY``/``HTTPS_PROXY`` point at a closed loopback
port (``NO_PROXY`` exempts loopback), so an HTTP client that tries to reach the internet
fails instead. No snippet needs a network.

The script is the Markdown file with every other line blanked, so a traceback's line numbers
are the Markdown file's; a failure names the file and line of the block, e.g.
``docs/web.md:15``. The scripts run in parallel (one per core) while the tests collect their
results, which keeps this module's wall time near the slowest snippet's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.support.posthog_receiver import TEST_API_KEY, PosthogReceiver

ROOT = Path(__file__).parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
TIMEOUT = 120.0
CONTINUE = "<!-- continue -->"
# The comment on the line before a block: "continue", "warns", or both ("continue warns").
_MARKER = re.compile(r"^<!--\s*((?:continue|warns)(?:[\s,]+(?:continue|warns))*)\s*-->$")
RUN, COMPILE = "python", "py"
# A fence opens with three or more backticks and an info string; it closes with at least as many.
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
# Nothing listens here: a client that obeys the proxy variables is refused at once.
_DEAD_PROXY = "http://127.0.0.1:9"


def documentation_files() -> list[Path]:
    """Return README.md and every Markdown file under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Snippet:
    """One script to run or fragment to compile: blocks of one file, at their own lines."""

    path: Path
    line: int  # the first line of code of the first block (1-based)
    kind: str  # RUN or COMPILE
    lines: dict[int, str]  # line number -> code, for every block of the script
    warns: bool = False  # a block is marked <!-- warns -->: obs_sdk's warnings are expected

    @property
    def where(self) -> str:
        """``file:line`` relative to the repository (or absolute, outside it)."""
        try:
            name = self.path.relative_to(ROOT).as_posix()
        except ValueError:
            name = str(self.path)
        return f"{name}:{self.line}"

    def source(self) -> str:
        """Return the code with blank lines in between, so line numbers match the file."""
        last = max(self.lines)
        return "".join(self.lines.get(n, "\n") for n in range(1, last + 1))


def extract(path: Path) -> list[Snippet]:
    """Return the ```python scripts (continued blocks joined) and ```py fragments of *path*.

    Raises:
        ValueError: an unclosed fence, or ``<!-- continue -->`` with no python block before it.
    """
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    snippets: list[Snippet] = []
    previous_line = ""  # the last non-blank line before a fence
    i = 0
    while i < len(text):
        match = _FENCE.match(text[i].rstrip("\n"))
        if not match:
            if text[i].strip():
                previous_line = text[i].strip()
            i += 1
            continue
        indent, ticks = len(match["indent"]), match["ticks"]
        language = (match["info"].split() or [""])[0]
        start = i + 1
        i = start
        while i < len(text) and not re.match(rf"^\s*{ticks}`*\s*$", text[i]):
            i += 1
        if i == len(text):
            raise ValueError(f"{path}:{start}: the code block is never closed")
        # Lines of a block indented under a list item lose that indentation.
        body = {n + 1: _dedent(text[n], indent) for n in range(start, i)}
        marker = _MARKER.match(previous_line)
        words = set(re.split(r"[\s,]+", marker[1])) if marker else set()
        if language in (RUN, COMPILE):
            if "continue" in words and language == RUN:
                if not snippets or snippets[-1].kind != RUN:
                    raise ValueError(
                        f"{path}:{start}: {CONTINUE} needs a ```python block before it"
                    )
                snippets[-1].lines.update(body)
                if "warns" in words:
                    snippets[-1] = replace(snippets[-1], warns=True)
            else:
                snippets.append(Snippet(path, start + 1, language, dict(body), "warns" in words))
        previous_line = ""
        i += 1
    return snippets


def _dedent(line: str, indent: int) -> str:
    """Remove the fence's indentation (a block inside a list item) from one line."""
    return line[indent:] if line[:indent].strip() == "" else line.lstrip()


def snippet_environment(posthog_host: str) -> dict[str, str]:
    """The environment a snippet runs in: this venv, a loopback PostHog, no internet."""
    env = dict(os.environ)
    env.update(
        POSTHOG_API_KEY=TEST_API_KEY,
        POSTHOG_HOST=posthog_host,
        HTTP_PROXY=_DEAD_PROXY,
        HTTPS_PROXY=_DEAD_PROXY,
        http_proxy=_DEAD_PROXY,
        https_proxy=_DEAD_PROXY,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONDONTWRITEBYTECODE="1",
        # As in pytest's configuration: a snippet that warns (a deprecated call) fails.
        PYTHONWARNINGS="error",
    )
    # The test's own switches must not leak into what a reader would run.
    for name in ("OBS_SDK_CONSOLE", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    return env


# Installed as the snippet interpreter's sitecustomize: a snippet whose instrumentation failed
# quietly (obs_sdk swallows its own errors, logging them) claims what did not happen.
_SITECUSTOMIZE = """\
import atexit, logging, os, sys

class _Seen(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)
        sys.stderr.write("obs_sdk logged: " + self.format(record) + "\\n")

_seen = _Seen()
logging.getLogger("obs_sdk").addHandler(_seen)

@atexit.register  # registered first, so it runs last: after obs_sdk's own exit flush
def _fail_on_obs_sdk_warnings():
    if _seen.records:
        sys.stderr.flush()
        os._exit(3)
"""
_OBS_SDK_LOGGED = 3
_WARNS_HINT = (
    " because obs_sdk logged a warning; if the block means to show it, put <!-- warns --> "
    "on the line before the block"
)


def check(snippet: Snippet, env: dict[str, str]) -> str | None:
    """Run or compile *snippet*; return None when it passed, else a message naming file:line."""
    source = snippet.source()
    name = snippet.where.rsplit(":", 1)[0]
    if snippet.kind == COMPILE:
        try:
            compile(source, name, "exec")
        except SyntaxError as error:
            return f"{name}:{error.lineno}: ```py block does not compile: {error.msg}"
        return None
    with tempfile.TemporaryDirectory(prefix="obs-snippet-") as tmp:
        script = Path(tmp) / "snippet.py"
        workdir = Path(tmp) / "cwd"
        workdir.mkdir()
        script.write_text(source, encoding="utf-8")
        if not snippet.warns:
            site = Path(tmp) / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
            env = {**env, "PYTHONPATH": str(site)}
        try:
            proc = subprocess.run(
                [sys.executable, str(script)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"{snippet.where}: ```python block still running after {TIMEOUT:.0f} s"
    if proc.returncode == 0:
        return None
    # Tracebacks name the temp script; its line numbers are the Markdown file's.
    output = (proc.stdout + proc.stderr).replace(str(script), name)
    hint = _WARNS_HINT if proc.returncode == _OBS_SDK_LOGGED else ""
    return f"{snippet.where}: ```python block exited with {proc.returncode}{hint}\n{output}"


SNIPPETS = [snippet for path in documentation_files() for snippet in extract(path)]


@pytest.fixture(scope="module")
def receiver() -> Iterator[PosthogReceiver]:
    """The loopback PostHog that every snippet's ``POSTHOG_HOST`` names."""
    with PosthogReceiver() as receiver:
        yield receiver


class Runs:
    """Snippet runs on a thread pool: started ahead, each awaited by its own test."""

    def __init__(self, pool: ThreadPoolExecutor, env: dict[str, str]) -> None:
        self._pool, self._env = pool, env
        self._futures: dict[str, Future[str | None]] = {}

    def start(self, snippet: Snippet) -> None:
        """Start *snippet* unless it has been started."""
        if snippet.where not in self._futures:
            self._futures[snippet.where] = self._pool.submit(check, snippet, self._env)

    def result(self, snippet: Snippet) -> str | None:
        """Return what `check` says about *snippet*, starting it if need be."""
        self.start(snippet)
        return self._futures[snippet.where].result()


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, receiver: PosthogReceiver) -> Iterator[Runs]:
    """Start the selected snippets at once, one per core (``-k`` runs only those chosen)."""
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        runs = Runs(pool, snippet_environment(receiver.url))
        for item in request.session.items:
            params = getattr(item, "callspec", None)
            if params is not None and isinstance(params.params.get("snippet"), Snippet):
                runs.start(params.params["snippet"])
        yield runs
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.where for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, runs: Runs) -> None:
    """Each ```python script exits 0 in a fresh directory; each ```py fragment compiles."""
    failure = runs.result(snippet)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def test_the_readme_event_reaches_posthog(runs: Runs, receiver: PosthogReceiver) -> None:
    """The README's first example promises a PostHog event: the receiver got it."""
    first = next(s for s in SNIPPETS if s.path.name == "README.md" and s.kind == RUN)
    assert runs.result(first) is None
    sent = [
        (e["distinct_id"], e["properties"]["file_id"], e["properties"]["$groups"])
        for e in receiver.events_named("file_downloaded")
    ]
    assert ("u_1", "f_1", {"workspace": "ws_1", "organization": "org_1"}) in sent


class TestTheChecker:
    """The checker itself: it must be able to fail, and say where."""

    def test_a_broken_snippet_fails_naming_its_file_and_line(self) -> None:
        """A ```python block that raises fails with file:line and the traceback's line."""
        path = FIXTURES / "broken.md"
        snippets = extract(path)
        failures = [check(s, snippet_environment("http://127.0.0.1:9")) for s in snippets]
        where = path.relative_to(ROOT).as_posix()
        assert failures[0] is None  # the good block passes
        broken = failures[1]
        assert broken is not None
        assert broken.startswith(f"{where}:12: ```python block exited with 1")
        assert f'File "{where}", line 15' in broken  # the traceback points into the page
        assert "ZeroDivisionError" in broken
        assert failures[2] == f"{where}:20: ```py block does not compile: '(' was never closed"

    def test_continued_blocks_share_one_script_and_others_start_fresh(self) -> None:
        """``<!-- continue -->`` joins a block to the previous one; without it, names are gone."""
        snippets = extract(FIXTURES / "continued.md")
        env = snippet_environment("http://127.0.0.1:9")
        assert [(s.line, s.kind, sorted(s.lines)) for s in snippets] == [
            (6, RUN, [6, 7, 12, 13]),
            (17, RUN, [17]),
        ]
        assert check(snippets[0], env) is None
        failure = check(snippets[1], env)
        assert failure is not None
        assert "NameError: name 'greeting' is not defined" in failure

    def test_a_snippet_runs_in_an_empty_directory_of_its_own(self, tmp_path: Path) -> None:
        """The working directory is new and empty each time, never the repository."""
        page = tmp_path / "page.md"
        page.write_text(
            "```python\nimport os\nassert os.listdir() == [], os.listdir()\n"
            "open('left-behind.txt', 'w').close()\n```\n"
        )
        (snippet,) = extract(page)
        env = snippet_environment("http://127.0.0.1:9")
        assert check(snippet, env) is None
        assert check(snippet, env) is None  # the file the first run left is not seen

    def test_a_snippet_cannot_reach_the_internet_through_an_http_client(
        self, tmp_path: Path
    ) -> None:
        """requests and httpx obey the proxy variables, which lead nowhere."""
        page = tmp_path / "page.md"
        page.write_text(
            "```python\nimport httpx\nhttpx.get('http://example.com/', timeout=5)\n```\n"
        )
        (snippet,) = extract(page)
        failure = check(snippet, snippet_environment("http://127.0.0.1:9"))
        assert failure is not None
        assert "ConnectError" in failure or "ProxyError" in failure

    def test_instrumentation_that_fails_quietly_fails_the_snippet(self, tmp_path: Path) -> None:
        """obs_sdk swallows a template error (the caller goes on), but the snippet fails."""
        page = tmp_path / "page.md"
        page.write_text(
            "```python\nimport obs_sdk as obs\n\n"
            "@obs.audited('file.read', metadata={'bytes': '{result.size}'})\n"
            "def read(): ...\n\n"
            "with obs.scope(actor=obs.Actor.user('u_1')):\n    read()\n```\n"
        )
        (snippet,) = extract(page)
        failure = check(snippet, snippet_environment("http://127.0.0.1:9"))
        assert failure is not None
        assert failure.startswith(f"{page}:2: ```python block exited with 3")
        assert "obs_sdk logged: obs_sdk: @audited('file.read') on read" in failure

    def test_a_block_marked_warns_may_show_obs_sdk_warnings(self, tmp_path: Path) -> None:
        """``<!-- warns -->`` lets a block show a warning on purpose; the mark is per script."""
        block = (
            "```python\nimport logging\n"
            "logging.getLogger('obs_sdk').warning('shown on purpose')\n```\n"
        )
        page = tmp_path / "page.md"
        page.write_text(f"<!-- warns -->\n{block}\n{block}\n<!-- continue, warns -->\n{block}")
        marked, unmarked = extract(page)
        assert (marked.warns, unmarked.warns) == (True, True)  # continued, then marked
        env = snippet_environment("http://127.0.0.1:9")
        assert check(marked, env) is None
        assert check(replace(unmarked, warns=False), env) == (
            f"{page}:8: ```python block exited with 3{_WARNS_HINT}\n"
            + "obs_sdk logged: shown on purpose\n" * 2  # the block and its continuation
        )

    def test_a_deprecation_warning_fails_the_snippet(self, tmp_path: Path) -> None:
        """Readers copy what the docs show: a call that warns is not shown."""
        page = tmp_path / "page.md"
        page.write_text(
            "```python\nimport warnings\nwarnings.warn('old', DeprecationWarning)\n```\n"
        )
        (snippet,) = extract(page)
        failure = check(snippet, snippet_environment("http://127.0.0.1:9"))
        assert failure is not None
        assert "DeprecationWarning: old" in failure

    def test_an_unclosed_fence_is_an_error(self, tmp_path: Path) -> None:
        """A page whose block never closes is reported, not silently cut short."""
        page = tmp_path / "page.md"
        page.write_text("text\n\n```python\nprint(1)\n")
        with pytest.raises(ValueError, match=r"page.md:3: the code block is never closed"):
            extract(page)
