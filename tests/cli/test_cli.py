"""obs-sdk query, tail, migrate, keygen and errors: on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._hotpath._records import uuid7
from obs_sdk._ledger._tables import tables
from tests.cli.support import SCRIPT, run, run_process, seed


def jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestErrors:
    """A command that cannot run says, in one line, what to do, and exits 2."""

    def test_no_database(self) -> None:
        """Without --database or OBS_DATABASE_URL: which to set."""
        result = run("query", env={"OBS_DATABASE_URL": ""})
        assert result.exit_code == 2
        assert result.stderr == (
            "obs-sdk: no database: pass --database URL or set OBS_DATABASE_URL\n"
        )

    def test_unreachable_database(self) -> None:
        """A server that does not answer: cannot connect, and where to look."""
        result = run("-d", "postgresql+psycopg://nobody@127.0.0.1:1/none", "query")
        assert result.exit_code == 2
        assert result.stderr.startswith("obs-sdk: cannot connect to postgresql+psycopg://")
        assert "check --database or OBS_DATABASE_URL" in result.stderr
        assert len(result.stderr.splitlines()) == 1

    def test_not_a_url(self) -> None:
        """Something that is no URL: an example of one."""
        result = run("-d", "obs.db", "query")
        assert result.exit_code == 2
        assert "use e.g. sqlite:///obs.db" in result.stderr
        assert len(result.stderr.splitlines()) == 1

    def test_missing_tables(self, tmp_path: Path) -> None:
        """An empty database: run migrate."""
        result = run("-d", f"sqlite:///{tmp_path / 'empty.db'}", "query")
        assert result.exit_code == 2
        assert result.stderr.endswith("create them with: obs-sdk migrate\n")

    def test_bad_table_prefix(self, sqlite_url: str) -> None:
        """A prefix configure() would refuse: the same reason, before connecting."""
        result = run("-d", sqlite_url, "--table-prefix", "obs-", "query")
        assert result.exit_code == 2
        assert result.stderr.startswith("obs-sdk: --table-prefix: table_prefix='obs-': use ")

    def test_other_table_prefix(self, sqlite_url: str) -> None:
        """--table-prefix reaches the tables configure(table_prefix=...) made."""
        assert run("-d", sqlite_url, "--table-prefix", "audit_", "migrate").exit_code == 0
        result = run("-d", sqlite_url, "query")
        assert "create them with: obs-sdk migrate" in result.stderr
        env = {"OBS_TABLE_PREFIX": "audit_"}
        result = run("-d", sqlite_url, "query", "--format", "jsonl", env=env)
        assert (result.exit_code, result.stdout) == (0, "")

    def test_bad_cursor_is_one_line(self, sqlite_url: str) -> None:
        """An error the library raises (an unknown cursor) is its message, no traceback."""
        seed(sqlite_url, 2)
        result = run("-d", sqlite_url, "query", "--after", str(uuid7(time.time_ns())))
        assert result.exit_code == 2
        assert len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr

    def test_errors_in_a_real_process_have_no_traceback(self, tmp_path: Path) -> None:
        """The console entry point itself prints one line, exit code 2."""
        proc = run_process("query", env={"OBS_DATABASE_URL": f"sqlite:///{tmp_path}/e.db"})
        assert proc.returncode == 2
        assert proc.stderr == (
            f"obs-sdk: no obs_sdk tables (prefix 'obs_') in sqlite:///{tmp_path}/e.db: "
            "create them with: obs-sdk migrate\n"
        )


class TestMigrate:
    def test_creates_the_tables_then_query_finds_none(self, database_url: str) -> None:
        """migrate makes an empty database usable; running it again changes nothing."""
        for _ in range(2):
            result = run("-d", database_url, "migrate")
            assert result.exit_code == 0, result.stderr
        engine = sa.create_engine(database_url)
        try:
            names = set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert tables().audit.name in names
        result = run("-d", database_url, "query", "--format", "jsonl")
        assert (result.exit_code, result.stdout) == (0, "")


class TestQuery:
    """query: newest first, the filters of audit_log, table / JSON lines / CSV."""

    def test_newest_first_every_field(self, database_url: str) -> None:
        """JSON lines carry every column; the newest record comes first."""
        seed(database_url, 6)
        result = run("-d", database_url, "query", "--format", "jsonl")
        assert result.exit_code == 0, result.stderr
        rows = jsonl(result.stdout)
        assert [r["metadata"]["i"] for r in rows] == [5, 4, 3, 2, 1, 0]  # type: ignore[index]
        assert rows[0]["actor_email"] == "ada@example.com"
        assert rows[0]["organization_id"] == "org_other"
        assert set(rows[0]) >= {"id", "occurred_at", "action", "ip", "metadata", "error_type"}

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--organization", "org_acme"], [6, 4, 2, 0]),
            (["--actor", "u_1"], [4, 1]),
            (["--action", "file.deleted"], [4, 0]),
            (["--resource", "file:f_3"], [3]),
            (["--resource", "file", "-o", "org_other"], [5, 3, 1]),
            (["--since", "2000-01-01", "--until", "1h"], []),
        ],
    )
    def test_filters(self, sqlite_url: str, args: list[str], expected: list[int]) -> None:
        """Each filter narrows the page as audit_log's does."""
        seed(sqlite_url, 7)
        result = run("-d", sqlite_url, "query", "--format", "jsonl", *args)
        assert result.exit_code == 0, result.stderr
        assert [r["metadata"]["i"] for r in jsonl(result.stdout)] == expected  # type: ignore[index]

    def test_paging_with_after_visits_each_record_once(self, database_url: str) -> None:
        """--limit pages; stderr names the --after of the next page until the end."""
        seed(database_url, 7)
        seen: list[int] = []
        after: list[str] = []
        for _ in range(5):
            result = run("-d", database_url, "query", "-n", "3", "--format", "jsonl", *after)
            assert result.exit_code == 0, result.stderr
            seen += [r["metadata"]["i"] for r in jsonl(result.stdout)]  # type: ignore[index]
            if "more:" not in result.stderr:
                break
            after = ["--after", result.stderr.split("--after ")[1].strip()]
        assert seen == [6, 5, 4, 3, 2, 1, 0]

    def test_csv_round_trips(self, sqlite_url: str) -> None:
        """CSV has the columns as a header; metadata is JSON text; None is empty."""
        seed(sqlite_url, 3)
        result = run("-d", sqlite_url, "query", "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert [json.loads(r["metadata"])["i"] for r in rows] == [2, 1, 0]
        assert rows[0]["user_agent"] == ""
        assert json.loads(rows[0]["metadata"])["note"] == SCRIPT

    def test_table_shows_markup_as_text(self, sqlite_url: str) -> None:
        """The table prints values as they are (rich markup in data is not interpreted)."""
        obs.configure(database=sqlite_url, handle_signals=False)
        with obs.scope(actor=obs.Actor.user("[bold]u_1[/bold]"), organization="o"):
            obs.record_audit("x.y")
        obs.shutdown()
        result = run("-d", sqlite_url, "query")
        assert "[bold]u_1[/bold]" in result.stdout

    def test_environment_variable_in_a_real_process(self, database_url: str) -> None:
        """OBS_DATABASE_URL is read by the installed entry point."""
        seed(database_url, 2)
        proc = run_process("query", "--format", "jsonl", env={"OBS_DATABASE_URL": database_url})
        assert proc.returncode == 0, proc.stderr
        assert [r["metadata"]["i"] for r in jsonl(proc.stdout)] == [1, 0]  # type: ignore[index]


class TestTail:
    def test_last_lines_oldest_first(self, sqlite_url: str) -> None:
        """tail -n 3 prints the three newest, in the order they happened."""
        seed(sqlite_url, 5)
        result = run("-d", sqlite_url, "tail", "-n", "3", "--format", "jsonl")
        assert [r["metadata"]["i"] for r in jsonl(result.stdout)] == [2, 3, 4]  # type: ignore[index]

    def test_follow_prints_new_and_late_committed_records(self, database_url: str) -> None:
        """tail -f (a real process) prints records written after it started, including one
        whose transaction committed late (its time older than records already shown)."""
        seed(database_url, 2)
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "obs_sdk.cli",
                "-d",
                database_url,
                "tail",
                "-f",
                "-n",
                "1",
                "--format",
                "jsonl",
                "--interval",
                "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as proc:
            try:
                self._follow(proc, database_url)
            finally:
                proc.terminate()

    def _follow(self, proc: subprocess.Popen[str], database_url: str) -> None:
        """The steps of the test above, against the running tail -f."""
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["metadata"]["i"] == 1
        seed(database_url, 1, start=2)
        assert json.loads(proc.stdout.readline())["metadata"]["i"] == 2
        # A record made 5 s ago whose transaction only commits now.
        late = time.time_ns() - 5_000_000_000
        engine = sa.create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(
                tables().audit.insert(),
                {
                    "id": uuid7(late),
                    "occurred_at": obs_time(late),
                    "action": "late.commit",
                    "outcome": "success",
                    "actor_type": "system",
                    "metadata": {"i": 99},
                },
            )
        engine.dispose()
        assert json.loads(proc.stdout.readline())["action"] == "late.commit"


def obs_time(ns: int) -> object:
    import datetime

    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)


class TestKeygen:
    def test_writes_a_private_key_only_its_owner_reads(self, tmp_path: Path) -> None:
        """keygen writes PREFIX.key (mode 600) and PREFIX.pub, loadable PEM Ed25519 keys."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        prefix = str(tmp_path / "k")
        result = run("keygen", "--out", prefix)
        assert result.exit_code == 0, result.stderr
        private = Path(prefix + ".key")
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        public = serialization.load_pem_public_key(Path(prefix + ".pub").read_bytes())
        assert public == key.public_key()

    def test_never_overwrites_without_force(self, tmp_path: Path) -> None:
        """An existing key is never replaced by accident."""
        prefix = str(tmp_path / "k")
        run("keygen", "--out", prefix)
        before = Path(prefix + ".key").read_bytes()
        result = run("keygen", "--out", prefix)
        assert result.exit_code == 2
        assert "pass --force" in result.stderr
        assert Path(prefix + ".key").read_bytes() == before


class TestImport:
    def test_import_obs_sdk_loads_no_cli_or_viewer_library(self) -> None:
        """click, rich, jinja2 and cryptography stay out of `import obs_sdk`."""
        code = (
            "import sys, json, obs_sdk; print(json.dumps(sorted({m.split('.')[0] for m in "
            "sys.modules} & {'click', 'rich', 'jinja2', 'cryptography', 'starlette'})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == []

    def test_without_click_main_names_the_extra(self) -> None:
        """No click installed: one line saying which extra to install, exit 2."""
        code = "import sys; sys.modules['click'] = None; from obs_sdk.cli import main; main()"
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 2
        assert proc.stderr == "obs-sdk: the command line needs click: pip install 'obs-sdk[cli]'\n"
