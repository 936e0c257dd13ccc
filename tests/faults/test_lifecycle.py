"""Faults at the edges of a process's life: starting beside live transactions, SIGTERM.

Real processes (``sys.executable``) against a SQLite file or the real PostgreSQL server.
The parent holds transactions or locks on the obs_ tables while a child configures obs_sdk
or is asked to stop, then reads what the child left in the database.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

import obs_sdk as obs
from tests.support.processes import configure_in_step

pytestmark = pytest.mark.acceptance

TIMEOUT = 60  # seconds; a hung child fails the test instead of hanging the suite
CONFIGURE_BOUND = 3.0  # seconds; generous: a configure() that waits for nothing takes ms
RECORDS = 3000
WORKERS = 8  # processes starting together
FILES = 100  # fresh files each of them configures; the race is per file


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    """An engine of the test's own (NullPool: it holds no connection between reads)."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def lifecycle() -> Iterator[ModuleType]:
    """obs_sdk._delivery._lifecycle, with SIGTERM's handler restored after the test.

    Imported here rather than at the top of the file, so that the startup tests still run
    against an obs_sdk without that module.
    """
    before = signal.getsignal(signal.SIGTERM)
    module = importlib.import_module("obs_sdk._delivery._lifecycle")
    try:
        yield module
    finally:
        module.uninstall_signal_handlers()
        signal.signal(signal.SIGTERM, before)


class Child:
    """A script in a fresh interpreter with OBS_URL set, talked to line by line."""

    def __init__(self, source: str, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(source)],
            env={**os.environ, "OBS_URL": url},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def read_line(self) -> str:
        """The child's next line of output (the test fails with its stderr if it ended)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code, _, err = self.finish()
            pytest.fail(f"the child ended ({code}) instead of answering:\n{err}", pytrace=False)
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, str, str]:
        """Wait for the end (killed after TIMEOUT); return exit code, stdout, stderr."""
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"the child hung for {TIMEOUT} s and was killed:\n{err}", pytrace=False)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@contextmanager
def child(source: str, url: str) -> Iterator[Child]:
    """Run *source* as a Child; kill it if the test ends first."""
    c = Child(source, url)
    try:
        yield c
    finally:
        c.kill()


def count_rows(engine: sa.Engine, action: str) -> int:
    """Distinct audit rows of *action* (a doubled id would show as fewer than rows)."""
    with engine.connect() as conn:
        total, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT id) FROM obs_audit_log WHERE action = :a"),
            {"a": action},
        ).one()
    assert total == distinct
    return int(total)


@contextmanager
def writes_blocked(url: str) -> Iterator[None]:
    """Block every write to obs_audit_log while the block runs (SQLite: the whole file)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        con = sqlite3.connect(parsed.database, isolation_level=None, timeout=30)
        try:
            con.execute("BEGIN IMMEDIATE")  # the write lock; readers go on (WAL)
            yield
        finally:
            con.close()  # rolls back: the lock is released
        return
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE obs_audit_log IN EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


# -- startup -------------------------------------------------------------------------------

# Configures obs_sdk and prints, as JSON, how long configure() took and every statement it
# ran, each with the locks its backend held right after it (PostgreSQL's pg_locks).
CONFIGURE_AND_REPORT = """
    import json, os, time
    import sqlalchemy as sa
    import obs_sdk as obs

    seen = []

    def after(conn, cursor, statement, parameters, context, executemany):
        entry = {"sql": " ".join(statement.split()), "locks": []}
        if conn.dialect.name == "postgresql":
            with cursor.connection.cursor() as c:  # the same backend and transaction
                c.execute(
                    "SELECT locktype, mode, coalesce(relation::regclass::text, '')"
                    " FROM pg_locks WHERE pid = pg_backend_pid()"
                )
                entry["locks"] = [list(row) for row in c.fetchall()]
        seen.append(entry)

    sa.event.listen(sa.engine.Engine, "after_cursor_execute", after)
    began = time.perf_counter()
    obs.configure(os.environ["OBS_URL"])
    elapsed = time.perf_counter() - began
    sa.event.remove(sa.engine.Engine, "after_cursor_execute", after)
    print(json.dumps({"elapsed": elapsed, "seen": seen}), flush=True)
    """


def configure_in_child(url: str) -> tuple[float, list[dict[str, Any]]]:
    """Run configure() in a new process; return its duration and what it executed."""
    with child(CONFIGURE_AND_REPORT, url) as c:
        code, out, err = c.finish()
    assert code == 0, err
    report = json.loads(out)
    return report["elapsed"], report["seen"]


def obs_statements(seen: list[dict[str, Any]]) -> list[str]:
    """The statements that touched obs_ tables or took a lock (not the driver's own setup)."""
    return [
        entry["sql"] for entry in seen if "obs_" in entry["sql"] or "lock" in entry["sql"].lower()
    ]


@contextmanager
def live_transactions(engine: sa.Engine) -> Iterator[None]:
    """Hold what a running app holds between two statements of its transactions.

    One transaction inserted into obs_audit_log (ROW EXCLUSIVE: a CREATE INDEX on the table
    waits for it), one holds an obs_storage_usage row FOR UPDATE (a quota check).
    """
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO obs_storage_usage (owner, bytes) VALUES ('u_1', 10)"))
    with engine.connect() as writer, engine.connect() as metering:
        writer.execute(
            sa.text(
                "INSERT INTO obs_audit_log (id, occurred_at, action, outcome, actor_type, "
                "metadata) VALUES (gen_random_uuid(), now(), 'held', 'success', 'anonymous', "
                "'{}')"
            )
        )
        metering.execute(
            sa.text("SELECT bytes FROM obs_storage_usage WHERE owner = 'u_1' FOR UPDATE")
        )
        try:
            yield
        finally:
            writer.rollback()
            metering.rollback()


def schema_names(engine: sa.Engine) -> dict[str, set[str]]:
    """Each obs_ table with the names of its indexes."""
    inspector = sa.inspect(engine)
    return {
        name: {str(index["name"]) for index in inspector.get_indexes(name)}
        for name in inspector.get_table_names()
        if name.startswith("obs_")
    }


def expected_schema() -> dict[str, set[str]]:
    return {
        table.name: {str(index.name) for index in table.indexes}
        for table in obs.metadata("obs_").sorted_tables
    }


def versions(engine: sa.Engine) -> list[tuple[int]]:
    with engine.connect() as conn:
        return [
            (int(v),) for (v,) in conn.execute(sa.text("SELECT version FROM obs_schema_version"))
        ]


class TestStartupBesideLiveTransactions:
    """configure() on a current schema reads one row and takes no lock (PostgreSQL)."""

    @pytest.mark.postgres
    def test_current_schema_one_select_and_no_lock(self, postgres_engine: sa.Engine) -> None:
        """With transactions holding the obs_ tables, configure() returns at once, lock-free.

        The only statement on an obs_ table is one SELECT of the schema version, and the
        configuring backend holds no lock but that read's ACCESS SHARE (which conflicts
        with nothing but ACCESS EXCLUSIVE): no DDL, no advisory lock.
        """
        obs.create_tables(postgres_engine)
        url = postgres_engine.url.render_as_string(hide_password=False)
        with live_transactions(postgres_engine):
            elapsed, seen = configure_in_child(url)
        assert elapsed < CONFIGURE_BOUND
        assert obs_statements(seen) == ["SELECT obs_schema_version.version FROM obs_schema_version"]
        held = {
            (locktype, mode, relation)
            for entry in seen
            for locktype, mode, relation in entry["locks"]
            if locktype == "advisory" or relation.startswith("obs_")
        }
        assert held <= {
            ("relation", "AccessShareLock", "obs_schema_version"),
            ("relation", "AccessShareLock", "obs_schema_version_pkey"),
        }

    @pytest.mark.postgres
    def test_existing_tables_without_a_version_get_only_the_version(
        self, postgres_engine: sa.Engine
    ) -> None:
        """Tables made from obs.metadata() (e.g. by Alembic), no version row: no DDL on them.

        configure() finds every table and index present, creates nothing and records the
        version, so the live transactions on those tables do not hold it up.
        """
        obs.metadata("obs_").create_all(postgres_engine)
        url = postgres_engine.url.render_as_string(hide_password=False)
        with live_transactions(postgres_engine):
            elapsed, seen = configure_in_child(url)
        assert elapsed < CONFIGURE_BOUND
        ddl = [sql for sql in obs_statements(seen) if sql.upper().startswith(("CREATE", "ALTER"))]
        assert ddl == []
        assert versions(postgres_engine) == [(3,)]


class TestStartupCreates:
    """The create path: a fresh database gets everything, a partial one what it lacks."""

    def test_fresh_database_gets_every_table_and_index(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """configure() on an empty database creates the whole schema and records version 2."""
        obs.configure(database_url)
        assert schema_names(reader) == expected_schema()
        assert versions(reader) == [(3,)]

    def test_a_missing_index_is_created_alone(self, database_url: str, reader: sa.Engine) -> None:
        """A database missing one index and the version row gets that index and the row."""
        obs.create_tables(reader)
        with reader.begin() as conn:
            conn.execute(sa.text("DROP INDEX obs_audit_actor_time_idx"))
            conn.execute(sa.text("DELETE FROM obs_schema_version"))
        obs.configure(database_url)
        assert schema_names(reader) == expected_schema()
        assert versions(reader) == [(3,)]

    def test_a_current_version_skips_the_create_path(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """With the version row in place, configure() trusts it: a dropped index stays dropped.

        (The version row is written in the transaction that creates the schema, so it
        stands for the whole schema; this pins that configure() reads nothing more.)
        """
        obs.create_tables(reader)
        with reader.begin() as conn:
            conn.execute(sa.text("DROP INDEX obs_audit_actor_time_idx"))
        obs.configure(database_url)
        assert "obs_audit_actor_time_idx" not in schema_names(reader)["obs_audit_log"]


class TestStartupTogether:
    """A deployment starts its workers at once: every one of them configures the same file."""

    def test_processes_configuring_one_fresh_sqlite_file_at_once(self, tmp_path: Path) -> None:
        """8 processes configure() each of 100 fresh files in the same instant: none fails.

        Switching a new SQLite file to WAL takes its exclusive lock, and SQLite answers a
        second process asking for it with "database is locked" at once, without the busy
        timeout's wait; a deployment's workers starting together hit that.
        """
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(WORKERS)
        urls = [f"sqlite:///{tmp_path / f'obs{n}.db'}" for n in range(FILES)]
        procs = [
            ctx.Process(target=configure_in_step, args=(urls, barrier)) for _ in range(WORKERS)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(TIMEOUT * 2)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        for url in urls:
            engine = sa.create_engine(url)
            try:
                assert versions(engine) == [(3,)]
            finally:
                engine.dispose()


# -- SIGTERM -------------------------------------------------------------------------------

# Configures obs_sdk (which installs the SIGTERM handler unless handle_signals=False), may
# install it again explicitly ({install}: another flush and timeout) and, once the parent has
# blocked the database, makes RECORDS audited calls; prints the counters, then waits to be
# signalled.
QUEUE_THEN_WAIT = """
    import json, os, signal, sys
    import obs_sdk as obs
    from obs_sdk._delivery import _lifecycle

    flushes = []

    def flush(timeout):
        flushes.append(timeout)
        return obs.flush(timeout)

    {before_install}

    @obs.audited("file.downloaded", resource=obs.Resource("file", "{{file_id}}"))
    def download(file_id):
        return file_id

    obs.configure(os.environ["OBS_URL"]{configure})
    {install}
    print("configured", flush=True)
    sys.stdin.readline()  # the parent blocks writes to obs_audit_log
    for i in range({records}):
        download(f"f_{{i}}")
    s = obs.stats()
    print(json.dumps({{"delivered": s["delivered"], "dropped": s["dropped"]}}), flush=True)
    sys.stdin.readline()  # never answered: SIGTERM ends the wait
    """


# Installed again with a flush that counts its calls and a 10 s timeout (configure()'s is 5 s).
INSTALL = "_lifecycle.install_signal_handlers(flush, 10.0)"


def queue_then_wait(
    records: int, *, before_install: str = "", install: str = INSTALL, configure: str = ""
) -> str:
    return textwrap.dedent(QUEUE_THEN_WAIT).format(
        records=records,
        before_install=textwrap.dedent(before_install).strip(),
        install=textwrap.dedent(install).strip(),
        configure=configure,
    )


@contextmanager
def signalled_while_blocked(c: Child, url: str) -> Iterator[None]:
    """Block writes, let the child queue its records, SIGTERM it; unblock when the block ends.

    Checks that nothing was delivered before the signal and that the child is still
    alive (flushing, not terminated) while the database is blocked.
    """
    assert c.read_line() == "configured\n"
    with writes_blocked(url):
        c.send("go")
        assert json.loads(c.read_line()) == {"delivered": 0, "dropped": 0}
        c.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the default action would have ended the child by now
        assert c.proc.poll() is None, "the child ended at SIGTERM without waiting for a flush"
        yield


class TestSigterm:
    """SIGTERM flushes what is queued, then terminates as it would have without obs_sdk."""

    def test_every_queued_record_is_written(self, database_url: str, reader: sa.Engine) -> None:
        """3,000 records queued behind a blocked database: SIGTERM writes all, exits -15.

        As a user runs it: configure() installed the handler (handle_signals=True, the
        default), nothing else did.
        """
        with child(queue_then_wait(RECORDS, install=""), database_url) as c:
            with signalled_while_blocked(c, database_url):
                pass
            code, _, err = c.finish()
        assert code == -signal.SIGTERM, err
        assert count_rows(reader, "file.downloaded") == RECORDS

    def test_handle_signals_false_leaves_sigterm_alone(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """configure(handle_signals=False): SIGTERM's default action ends the child at once."""
        source = queue_then_wait(RECORDS, install="", configure=", handle_signals=False")
        with child(source, database_url) as c:
            assert c.read_line() == "configured\n"
            with writes_blocked(database_url):
                c.send("go")
                assert json.loads(c.read_line()) == {"delivered": 0, "dropped": 0}
                c.proc.send_signal(signal.SIGTERM)
                code = c.proc.wait(timeout=5.0)
            c.finish()
        assert code == -signal.SIGTERM
        assert count_rows(reader, "file.downloaded") == 0

    def test_a_second_sigterm_terminates_at_once(self, database_url: str) -> None:
        """SIGTERM again while the flush waits for a blocked database: exit without waiting."""
        with child(queue_then_wait(RECORDS), database_url) as c:
            with signalled_while_blocked(c, database_url):
                c.proc.send_signal(signal.SIGTERM)
                code = c.proc.wait(timeout=5.0)  # the flush's own timeout is 10 s
            _, _, err = c.finish()
        assert code == -signal.SIGTERM, err

    def test_an_existing_handler_runs_after_the_flush(self, sqlite_url: str) -> None:
        """The app's own SIGTERM handler is chained: it runs after everything was written."""
        mine = """
            def mine(signum, frame):
                s = obs.stats()
                print(json.dumps({"mine": signum, "delivered": s["delivered"],
                                  "queued": s["queued"]}), flush=True)
                sys.exit(7)

            signal.signal(signal.SIGTERM, mine)
        """
        with child(queue_then_wait(200, before_install=mine), sqlite_url) as c:
            with signalled_while_blocked(c, sqlite_url):
                pass
            code, out, err = c.finish()
        assert code == 7, err
        assert json.loads(out) == {
            "mine": signal.SIGTERM,
            "delivered": 200,
            "queued": 0,
        }

    def test_installing_twice_flushes_once(self, sqlite_url: str) -> None:
        """Installing again (configure() again) neither chains ours to itself nor flushes twice."""
        twice = "_lifecycle.install_signal_handlers(flush, 10.0)\n" * 2
        mine = """
            def mine(signum, frame):
                print(json.dumps({"flushes": len(flushes)}), flush=True)
                sys.exit(7)

            signal.signal(signal.SIGTERM, mine)
        """
        source = queue_then_wait(10, before_install=mine, install=twice)
        with child(source, sqlite_url) as c:
            with signalled_while_blocked(c, sqlite_url):
                pass
            code, out, err = c.finish()
        assert code == 7, err
        assert json.loads(out) == {"flushes": 1}


class TestInstall:
    """Where the handler goes, what it replaces and what uninstall puts back (in process)."""

    def test_uninstall_restores_the_previous_handler(self, lifecycle: ModuleType) -> None:
        """install then uninstall leaves SIGTERM exactly as it was."""
        before = signal.getsignal(signal.SIGTERM)
        lifecycle.install_signal_handlers(lambda timeout: True, 1.0)
        assert signal.getsignal(signal.SIGTERM) is not before
        lifecycle.uninstall_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) == before

    def test_install_twice_keeps_one_handler(self, lifecycle: ModuleType) -> None:
        """The second install keeps the handler already there; one uninstall removes it."""
        before = signal.getsignal(signal.SIGTERM)
        lifecycle.install_signal_handlers(lambda timeout: True, 1.0)
        ours = signal.getsignal(signal.SIGTERM)
        lifecycle.install_signal_handlers(lambda timeout: True, 2.0)
        assert signal.getsignal(signal.SIGTERM) is ours
        lifecycle.uninstall_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) == before

    def test_a_handler_set_over_ours_is_left_in_place(self, lifecycle: ModuleType) -> None:
        """uninstall does not remove a handler the app set after ours."""

        def app_handler(signum: int, frame: object) -> None:
            return None

        lifecycle.install_signal_handlers(lambda timeout: True, 1.0)
        signal.signal(signal.SIGTERM, app_handler)
        lifecycle.uninstall_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) is app_handler

    def test_ignored_sigterm_stays_ignored(self, lifecycle: ModuleType) -> None:
        """A process that ignores SIGTERM keeps ignoring it."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lifecycle.install_signal_handlers(lambda timeout: True, 1.0)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN

    def test_sigint_is_left_to_python(self, lifecycle: ModuleType) -> None:
        """SIGINT keeps Python's KeyboardInterrupt (atexit then delivers the queue)."""
        before = signal.getsignal(signal.SIGINT)
        lifecycle.install_signal_handlers(lambda timeout: True, 1.0)
        assert signal.getsignal(signal.SIGINT) is before

    def test_install_off_the_main_thread_does_nothing(
        self, lifecycle: ModuleType, caplog: pytest.LogCaptureFixture
    ) -> None:
        """From another thread, install is a no-op without an error; a DEBUG log says why."""
        before = signal.getsignal(signal.SIGTERM)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                lifecycle.install_signal_handlers(lambda timeout: True, 1.0)
            except BaseException as exc:
                errors.append(exc)

        with caplog.at_level(logging.DEBUG, logger="obs_sdk"):
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
        assert errors == []
        assert signal.getsignal(signal.SIGTERM) == before
        assert any("main thread" in r.getMessage() for r in caplog.records), caplog.records
