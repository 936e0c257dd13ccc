"""The benchmark's ``--quick`` mode runs in CI and prints every row: no thresholds, no timing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

OVERHEAD_KEYS = (
    "bare",
    "functools",
    "floor",
    "wrapt",
    "a-bare",
    "a-functools",
    "a-floor",
    "a-wrapt",
    "obs0",
    "obs2",
    "obs5",
    "obs0-tx",
    "obs0-e2e",
    "trk",
    "stack",
    "a-obs0",
    "a-trk",
    "otel",
    "a-otel",
    "posthog",
    "logfire",
    "sentry",
)
SCALING_KEYS = ("tpl0", "tpl1", "tpl2", "tpl5", "tpl10", "scope0", "scope1", "scope2", "scope3")
NUMBER = re.compile(r"^[\d,]+(\.\d+)?$")
TIMES = "\N{MULTIPLICATION SIGN}"
RATIO = re.compile(rf"^[\d,]+(\.\d+)?{TIMES}$")


@pytest.fixture(scope="module")
def quick_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Run ``python -m benchmarks --quick`` once for the module; return stdout and the plot path."""
    plot = tmp_path_factory.mktemp("bench") / "overhead.png"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--plot", str(plot)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout, plot


def _row(output: str, key: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(f"| `{key}` "):
            return [cell.strip() for cell in line.strip().strip("|").split("|")]
    raise AssertionError(f"no row for contender {key!r} in:\n{output}")


class TestQuickBenchmark:
    def test_reports_the_machine_and_the_package_versions(
        self, quick_output: tuple[str, Path]
    ) -> None:
        """The header names the CPU, the Python build and the contenders' package versions."""
        output, _ = quick_output
        for item in (
            "| CPU |",
            "| Python |",
            "| packages |",
            "wrapt ",
            "opentelemetry-sdk ",
            "posthog ",
        ):
            assert item in output

    def test_prints_every_overhead_row_with_its_ratios(
        self, quick_output: tuple[str, Path]
    ) -> None:
        """Each contender has a median in ns and ratios to the bare call and the closure floor."""
        output, _ = quick_output
        for key in OVERHEAD_KEYS:
            cells = _row(output, key)
            median, ratio_bare, ratio_floor = cells[1], cells[5], cells[6]
            assert NUMBER.match(median), (key, cells)
            assert RATIO.match(ratio_bare), (key, cells)
            assert RATIO.match(ratio_floor), (key, cells)

    def test_prints_the_budget_ratios(self, quick_output: tuple[str, Path]) -> None:
        """The SPEC budget ratios are stated as numbers, not 'n/a'."""
        output, _ = quick_output
        budget = [
            line for line in output.splitlines() if line.startswith("- ") and "(budget" in line
        ]
        assert len(budget) == 4
        assert all(re.search(r"\*\*[\d.]+\*\*", line) for line in budget), budget

    def test_prints_the_scaling_rows(self, quick_output: tuple[str, Path]) -> None:
        """Template-field and scope-field growth rows each carry a ratio to the closure floor."""
        output, _ = quick_output
        for key in SCALING_KEYS:
            assert RATIO.match(_row(output, key)[6]), key

    def test_prints_throughput_against_raw_executemany(
        self, quick_output: tuple[str, Path]
    ) -> None:
        """SQLite has raw, Core and obs_sdk rows for 1, 2 and 4 threads, with ratios to raw."""
        output, _ = quick_output
        sqlite_rows = [line for line in output.splitlines() if line.startswith("| SQLite | ")]
        contenders = [line.split("|")[2] for line in sqlite_rows]
        assert any("raw executemany" in c for c in contenders)
        assert any("SQLAlchemy Core" in c for c in contenders)
        for threads in (1, 2, 4):
            assert any(f"{threads} thread(s), end to end" in c for c in contenders), threads
        assert all(TIMES in line for line in sqlite_rows if "end to end" in line)
        postgres = any(
            line.startswith("| PostgreSQL | raw executemany") for line in output.splitlines()
        )
        assert postgres == bool(os.environ.get("OBS_TEST_POSTGRES_URL"))

    def test_prints_the_busy_caller_rows(self, quick_output: tuple[str, Path]) -> None:
        """SQLite (and PostgreSQL when set): calls/s, delivered rows/s, dropped % and a ratio."""
        output, _ = quick_output
        rows = {
            line.split("|")[1].strip(): [
                cell.strip() for cell in line.strip().strip("|").split("|")
            ]
            for line in output.split("## Busy caller")[1].split("\n## ")[0].splitlines()
            if line.startswith(("| SQLite |", "| PostgreSQL |"))
        }
        databases = (
            ["SQLite", "PostgreSQL"] if os.environ.get("OBS_TEST_POSTGRES_URL") else ["SQLite"]
        )
        for database in databases:
            _, calls, delivered, dropped, sustained, ratio = rows[database]
            assert NUMBER.match(calls) and NUMBER.match(delivered), rows[database]
            assert re.match(r"^[\d.]+ %$", dropped) and NUMBER.match(sustained), rows[database]
            assert RATIO.match(ratio), rows[database]

    def test_prints_the_drop_path_next_to_the_queued_path(
        self, quick_output: tuple[str, Path]
    ) -> None:
        """@audited and @tracked each have queued and dropped ns per call and their ratio."""
        output, _ = quick_output
        for label in ("@audited, 2 fields", "@tracked, 1 property"):
            assert re.search(rf"\| {re.escape(label)} \| [\d,]+ \| [\d,]+ \| [\d.]+ \|", output), (
                label
            )

    def test_prints_memory_per_queued_record(self, quick_output: tuple[str, Path]) -> None:
        """The tracemalloc table has a byte count for each @audited variant."""
        output, _ = quick_output
        for label in ("@audited, 0 fields", "@audited, 2 fields", "@audited, 5 fields"):
            assert re.search(rf"\| {re.escape(label)} \| [\d,]+ \|", output), label

    def test_draws_the_plot(self, quick_output: tuple[str, Path]) -> None:
        """``--plot`` writes a PNG file."""
        _, plot = quick_output
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
