"""The demo (docs/examples/demo.py, what `scripts/demo` runs) reads right to a newcomer.

It runs as `scripts/demo` runs it: a separate interpreter, its own working directory, no
PostHog key (so analytics are printed). The venv is the test suite's; `scripts/demo`'s
lighter venv installs the same package with only the demo's extras.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

DEMO = Path(__file__).parents[2] / "docs" / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """Run the demo once; the tests read its output."""
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTHOG_", "OBS_SDK_"))}
    return subprocess.run(
        [sys.executable, str(DEMO), str(workdir / "data")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def section(output: str, title: str) -> list[str]:
    """Return the lines of the section whose heading starts with *title*."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("== ")), None)
    return [line for line in lines[start + 1 : end] if line.strip()]


class TestDemo:
    """What the demo prints."""

    def test_it_runs_without_a_traceback_or_a_warning(
        self, demo: subprocess.CompletedProcess[str]
    ) -> None:
        """Exit 0; the intended failures (a missing file, a failing webhook) print no traceback."""
        assert demo.returncode == 0, demo.stderr
        output = demo.stdout + demo.stderr
        assert "Traceback" not in output
        assert "obs_sdk dropped" not in output  # the stand-in for PostHog takes all

    def test_the_failing_webhook_handler_is_one_line(
        self, demo: subprocess.CompletedProcess[str]
    ) -> None:
        """The handler's exception is logged as one line naming the event and the error."""
        lines = [line for line in (demo.stdout + demo.stderr).splitlines() if "evt_3" in line]
        assert len(lines) == 1, lines
        assert "ConnectionError: the billing service timed out" in lines[0]

    def test_the_trail_reads_oldest_first(self, demo: subprocess.CompletedProcess[str]) -> None:
        """The trail is in time order, whatever order audit_log returns."""
        rows = section(demo.stdout, "the audit trail")[2:]
        times = [datetime.strptime(row.split()[0], "%H:%M:%S.%f") for row in rows]
        assert len(times) >= 10
        assert times == sorted(times)
        assert rows[0].split()[1] == "file.downloaded"
        assert rows[-1].split()[1] == "invoice.paid"

    def test_quotas_print_in_the_configured_unit(
        self, demo: subprocess.CompletedProcess[str]
    ) -> None:
        """The quota is configured in bytes (100,000): the refusal says bytes, not KiB."""
        lines = section(demo.stdout, "uploads are metered")
        refused = next(line for line in lines if "refused" in line)
        assert "KiB" not in refused
        assert re.search(r"90,000 bytes used of 100,000 bytes, 30,000 bytes more", refused), refused

    def test_stats_count_every_event_delivered(
        self, demo: subprocess.CompletedProcess[str]
    ) -> None:
        """Four analytics events, all handed to the stand-in client; nothing dropped."""
        stats = section(demo.stdout, "obs.stats()")
        assert "dropped=0" in stats[0]
        assert "posthog: {'submitted': 4, 'queued': 0, 'delivered': 4, 'dropped': 0" in stats[1]
