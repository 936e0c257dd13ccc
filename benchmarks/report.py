"""The machine and package versions, the result tables (Markdown) and the overhead plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import Result
from benchmarks.peers import Missing

PACKAGES = (
    "obs-sdk",
    "wrapt",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "posthog",
    "logfire",
    "sentry-sdk",
    "SQLAlchemy",
    "psycopg",
    "pyperf",
    "matplotlib",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _python_build() -> str:
    args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    flags = [
        flag for flag in ("--enable-optimizations", "--with-lto", "--enable-shared") if flag in args
    ]
    interpreter = f"{platform.python_implementation()} {platform.python_version()}"
    build = " ".join(flags) if flags else "no PGO/LTO flags"
    return f"{interpreter}, {platform.python_compiler()}, {build}"


def environment(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Describe the machine, the interpreter and the packages the numbers came from."""
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return [
        ("CPU", f"{_cpu_model()}, {cores} cores ({usable} usable)"),
        ("OS", platform.platform()),
        ("Python", _python_build()),
        ("executable", sys.executable),
        ("SQLite", sqlite3.sqlite_version),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("packages", ", ".join(versions)),
        *extra,
    ]


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], right_from: int = 1
) -> str:
    """Render a GitHub Markdown table; columns from *right_from* on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


TIMES = "\N{MULTIPLICATION SIGN}"


def _ns(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ratio(value: float) -> str:
    return (
        f"{value:,.0f}{TIMES}"
        if value >= 100
        else f"{value:,.1f}{TIMES}"
        if value >= 10
        else f"{value:.2f}{TIMES}"
    )


def overhead_table(results: dict[str, Result], missing: Sequence[Missing]) -> str:
    """One row per contender: median, IQR, mean, ratios to bare and to the closure floor, GCs.

    Async rows are compared with the async bare call and the async closure floor.
    """
    rows = []
    for key, result in results.items():
        prefix = "a-" if result.entry.is_async else ""
        bare = results[prefix + "bare"].median
        floor = results[prefix + "floor"].median
        q1, q3 = result.iqr
        rows.append(
            (
                f"`{key}` {result.entry.label}",
                _ns(result.median),
                f"{_ns(q1)}\N{EN DASH}{_ns(q3)}",
                _ns(min(result.samples)),
                _ns(result.mean),
                _ratio(result.median / bare),
                _ratio(result.median / floor),
                f"{result.full_gcs} ({result.gcs_per_million:,.0f})",
            )
        )
    rows += [(m.label, "—", "—", "—", "—", "—", "—", f"skipped: {m.reason}") for m in missing]
    header = (
        "contender",
        "median ns/call",
        "IQR ns",
        "min ns",
        "mean ns",
        f"{TIMES} bare",
        f"{TIMES} closure floor",
        "full GCs (per 1M calls)",
    )
    return markdown_table(header, rows)


def records_table(results: dict[str, Result]) -> str:
    """What each contender records per call (from the entries' own descriptions)."""
    rows = [(f"`{key}`", r.entry.records) for key, r in results.items() if r.entry.records]
    return markdown_table(("contender", "records per call"), rows, right_from=2)


def budget_lines(results: dict[str, Result]) -> list[str]:
    """The SPEC / issue 7 budget ratios, from this run's medians."""

    def ratio(a: str, b: str) -> str:
        if a not in results or b not in results:
            return "n/a (contender missing)"
        return f"{results[a].median / results[b].median:.2f}"

    return [
        f"- `@audited` 0 fields (queued) / closure floor: **{ratio('obs0', 'floor')}** "
        "(budget ≤ 2)",
        f"- `@audited` 2 fields (queued) / closure floor: **{ratio('obs2', 'floor')}**",
        f"- `@tracked` (queued) / closure floor: **{ratio('trk', 'floor')}** (budget ≤ 2)",
        f"- async `@audited` / async closure floor: **{ratio('a-obs0', 'a-floor')}**",
        f"- OpenTelemetry span decorator / `@audited` 0 fields: **{ratio('otel', 'obs0')}** "
        "(budget ≥ 25)",
        f"- direct `posthog.capture()` / `@tracked`: **{ratio('posthog', 'trk')}** (budget ≥ 80)",
    ]


_COLOURS = {"baseline": "#9e9e9e", "obs": "#1f77b4", "obs-e2e": "#9ecae1", "peer": "#d62728"}
_LEGEND = (
    ("baseline", "baseline"),
    ("obs", "obs_sdk, caller's cost"),
    ("obs-e2e", "obs_sdk, caller + worker writing the row"),
    ("peer", "peer"),
)


def plot_overhead(results: dict[str, Result], path: Path, clock: str) -> None:
    """Draw ns per call of every contender on a log axis (median, with the IQR as error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ordered = sorted(results.values(), key=lambda r: r.median)
    labels = [r.entry.label for r in ordered]
    medians = [r.median for r in ordered]
    errors = [[r.median - r.iqr[0] for r in ordered], [r.iqr[1] - r.median for r in ordered]]
    fig, ax = plt.subplots(figsize=(11, 0.34 * len(ordered) + 2.2))
    ax.barh(
        labels, medians, xerr=errors, color=[_COLOURS[r.entry.kind] for r in ordered], capsize=2
    )
    ax.set_xscale("log")
    what = "CPU ns (process)" if clock == "cpu" else "wall-clock ns"
    ax.set_xlabel(f"{what} per call of f(x): median over rounds, bar = IQR; log scale")
    ax.set_title("Per-call overhead, one process, one run")
    for y, result in enumerate(ordered):
        ax.text(result.iqr[1] * 1.1, y, _ns(result.median), va="center", fontsize=8)
    ax.set_xlim(min(medians) / 2, max(medians) * 4)
    handles = [Patch(color=_COLOURS[kind], label=label) for kind, label in _LEGEND]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    ax.grid(axis="x", which="both", alpha=0.25)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
