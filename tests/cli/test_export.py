"""obs-sdk export: every record once, in order, streamed; resumable after a crash."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from obs_sdk.cli._export import Cursor
from tests.cli.support import run, seed


def ids(text: str) -> list[str]:
    return [json.loads(line)["id"] for line in text.splitlines()]


class TestExport:
    def test_every_record_once_oldest_first(self, database_url: str, tmp_path: Path) -> None:
        """Across many pages, each matching record is written exactly once, in order."""
        seed(database_url, 23)
        out = tmp_path / "all.jsonl"
        result = run("-d", database_url, "export", "-O", str(out), "--page-size", "4", "-q")
        assert result.exit_code == 0, result.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["metadata"]["i"] for r in rows] == list(range(23))
        assert result.stderr == "exported 23 records\n"
        assert not Cursor(out).path.exists()  # complete: nothing to resume

    def test_filters_and_csv(self, sqlite_url: str) -> None:
        """Filters apply; CSV to stdout has one header and a row per record."""
        seed(sqlite_url, 9)
        result = run(
            "-d",
            sqlite_url,
            "export",
            "--format",
            "csv",
            "-o",
            "org_other",
            "--page-size",
            "2",
            "-q",
        )
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert [json.loads(r["metadata"])["i"] for r in rows] == [1, 3, 5, 7]
        assert {r["organization_id"] for r in rows} == {"org_other"}

    def test_csv_of_nothing_is_a_header(self, sqlite_url: str) -> None:
        """No match still gives a CSV a program can read."""
        seed(sqlite_url, 1)
        result = run("-d", sqlite_url, "export", "--format", "csv", "-o", "nobody", "-q")
        assert result.stdout.startswith("id,occurred_at,action,")
        assert len(result.stdout.splitlines()) == 1

    def test_resume_drops_a_torn_page_and_continues(self, sqlite_url: str, tmp_path: Path) -> None:
        """--resume truncates what followed the last recorded page and writes the rest:
        the file ends identical to an uninterrupted export."""
        seed(sqlite_url, 10)
        whole = tmp_path / "whole.csv"
        run("-d", sqlite_url, "export", "--format", "csv", "-O", str(whole), "-q")
        full = whole.read_bytes()
        lines = full.splitlines(keepends=True)
        kept = b"".join(lines[:5])  # the header and four records: a page was recorded
        torn = tmp_path / "torn.csv"
        torn.write_bytes(kept + lines[5][:20])  # a crash in the middle of the next page
        Cursor(torn).write(lines[4].split(b",")[0].decode(), len(kept))
        result = run(
            "-d", sqlite_url, "export", "--format", "csv", "-O", str(torn), "--resume", "-q"
        )
        assert result.exit_code == 0, result.stderr
        assert torn.read_bytes() == full
        assert result.stderr == "exported 6 records\n"

    def test_resume_without_cursor_says_so(self, sqlite_url: str, tmp_path: Path) -> None:
        """Nothing to resume: one line saying to run it again without --resume."""
        seed(sqlite_url, 1)
        result = run("-d", sqlite_url, "export", "-O", str(tmp_path / "x.jsonl"), "--resume")
        assert result.exit_code == 2
        assert "run it again without --resume" in result.stderr

    def test_killed_process_resumes_to_the_same_file(self, sqlite_url: str, tmp_path: Path) -> None:
        """A real export killed with SIGKILL mid-way, resumed, equals an uninterrupted one."""
        seed(sqlite_url, 3000)
        reference = tmp_path / "reference.jsonl"
        run("-d", sqlite_url, "export", "-O", str(reference), "-q")
        out = tmp_path / "killed.jsonl"
        args = [
            sys.executable,
            "-m",
            "obs_sdk.cli",
            "-d",
            sqlite_url,
            "export",
            "-O",
            str(out),
            "--page-size",
            "10",
            "-q",
        ]
        with subprocess.Popen(args, stderr=subprocess.DEVNULL) as proc:
            cursor = Cursor(out).path
            deadline = time.monotonic() + 60
            while not cursor.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL, "the export finished before it was killed"
        partial = len(ids(out.read_text(errors="replace").rsplit("\n", 1)[0] + "\n"))
        assert 0 < partial < 3000
        result = run("-d", sqlite_url, "export", "-O", str(out), "--resume", "-q")
        assert result.exit_code == 0, result.stderr
        assert out.read_bytes() == reference.read_bytes()

    def test_progress_bar_on_stderr(self, sqlite_url: str, tmp_path: Path) -> None:
        """Without -q a progress bar goes to stderr, never into the data."""
        seed(sqlite_url, 5)
        result = run("-d", sqlite_url, "export", "--page-size", "2")
        assert "100%" in result.stderr
        assert "5 records" in result.stderr
        assert len(ids(result.stdout)) == 5
