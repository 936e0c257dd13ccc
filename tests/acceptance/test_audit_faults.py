"""Faults the caller must never feel: a dropped table, a locked or read-only SQLite file, a
PostgreSQL outage. The tests run as root, so every fault is one root cannot bypass (no file
permissions): SQL DROP, a lock held by another connection, a read-only URI, a stopped server.

In each fault the caller's results and exceptions are unchanged, the caller's own commit
succeeds, and ``obs.stats()`` says what happened. The hanging sink is in
``tests/unit/test_dispatch.py::TestHangingSink``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import obs_sdk as obs
from tests._postgres import start_postgres, stop_postgres

pytestmark = pytest.mark.acceptance

app_md = sa.MetaData()
app_items = sa.Table(
    "app_items",
    app_md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50)),
)


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"), when="always")
def download(file_id: str, *, fail: bool = False) -> dict[str, str]:
    if fail:
        raise KeyError(file_id)
    return {"file_id": file_id}


def calls_are_unaffected(n: int, prefix: str = "f") -> None:
    """Make *n* successful and one failing call; results and the exception are the bare ones."""
    assert [download(f"{prefix}_{i}") for i in range(n)] == [
        {"file_id": f"{prefix}_{i}"} for i in range(n)
    ]
    error = KeyError("boom")
    with pytest.raises(KeyError) as raised:
        try:
            download("boom", fail=True)
        except KeyError as exc:
            error = exc
            raise
    assert raised.value is error
    assert raised.value.args == ("boom",)


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM obs_audit_log")).scalar_one())


def distinct_ids(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT count(*), count(DISTINCT id) FROM obs_audit_log")).one()
    return int(row[0]), int(row[1])


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    """An engine of the test's own (NullPool: it holds no connection between reads)."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


class TestTableDropped:
    """The audit table disappears while the process runs."""

    @pytest.mark.swallows_internal_errors
    def test_table_dropped_mid_run(self, database_url: str, reader: sa.Engine) -> None:
        """Calls and the caller's commit succeed; every lost record is counted as failed."""
        obs.configure(database_url)
        app = sa.create_engine(database_url)
        app_md.create_all(app)
        try:
            calls_are_unaffected(3, "before")
            assert obs.flush()
            assert count(reader) == 4
            with reader.begin() as conn:
                conn.execute(sa.text("DROP TABLE obs_audit_log"))
            calls_are_unaffected(5, "after")
            with Session(app) as session, obs.scope(session=session):
                session.execute(app_items.insert().values(id=1, name="kept"))
                assert download("f_tx") == {"file_id": "f_tx"}
                session.commit()
            with app.connect() as conn:
                assert conn.execute(sa.select(app_items.c.name)).scalars().all() == ["kept"]
        finally:
            app.dispose()
        assert obs.flush()
        stats = obs.stats()
        # 4 delivered before; 6 queued after the drop, plus the transactional one that fell
        # back to the queue at commit: all 7 failed.
        assert (stats["delivered"], stats["failed"], stats["submitted"]) == (4, 7, 11)
        assert stats["internal_errors"] >= 2  # the commit-time insert and the sink


class TestSqliteLocked:
    """Another connection holds BEGIN EXCLUSIVE on the SQLite file."""

    def test_records_wait_for_the_lock_then_arrive(self, sqlite_url: str, tmp_path: Path) -> None:
        """While locked, calls return and records wait; after COMMIT they all arrive once."""
        obs.configure(sqlite_url)
        holder = sqlite3.connect(tmp_path / "obs.db", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            calls_are_unaffected(20)
            assert obs.flush(timeout=0.3) is False  # the worker waits on the busy timeout
            assert obs.stats()["queued"] == 21
            holder.execute("COMMIT")
        finally:
            holder.close()
        assert obs.flush(timeout=30.0)
        stats = obs.stats()
        assert (stats["delivered"], stats["failed"], stats["dropped"]) == (21, 0, 0)
        engine = sa.create_engine(sqlite_url, poolclass=sa.NullPool)
        try:
            assert distinct_ids(engine) == (21, 21)
        finally:
            engine.dispose()


class TestSqliteReadOnly:
    """obs_sdk is configured with a read-only SQLite URI (mode=ro)."""

    @pytest.mark.swallows_internal_errors
    def test_read_only_database(self, tmp_path: Path) -> None:
        """Queued records fail and are counted; the caller's own transaction still records."""
        path = tmp_path / "obs.db"
        obs.configure(f"sqlite:///{path}")
        assert obs.shutdown()
        app = sa.create_engine(f"sqlite:///{path}")
        app_md.create_all(app)
        obs.configure(f"sqlite:///file:{path}?mode=ro&uri=true")
        try:
            calls_are_unaffected(4)
            with pytest.raises(obs.AuditWriteError, match="readonly"):
                obs.record_audit_now("credential.shown")
            # The app's read-write session carries its success record into its own commit.
            with Session(app) as session, obs.scope(session=session):
                session.execute(app_items.insert().values(id=1, name="kept"))
                download("f_tx")
                session.commit()
            assert obs.flush()
            stats = obs.stats()
            # 5 records failed on the read-only store; the transaction's own record is counted
            # delivered once its commit stored it.
            assert (stats["delivered"], stats["failed"], stats["submitted"]) == (1, 5, 6)
            assert [r.resource_id for r in obs.audit_log(app)] == ["f_tx"]
        finally:
            app.dispose()


@pytest.mark.postgres
class TestPostgresOutage:
    """The PostgreSQL server goes away mid-run and comes back."""

    def test_server_stopped_and_restarted(self, postgres_engine: sa.Engine) -> None:
        """Records made during the outage are retried and arrive exactly once afterwards."""
        url = postgres_engine.url.render_as_string(hide_password=False)
        reader = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            obs.configure(url)
            calls_are_unaffected(10, "before")
            assert obs.flush()
            stop_postgres()
            try:
                calls_are_unaffected(30, "during")
                assert obs.flush(timeout=0.5) is False
            finally:
                start_postgres()
            calls_are_unaffected(10, "after")
            assert obs.flush(timeout=60.0)
            stats = obs.stats()
            assert stats["retried"] > 0
            assert (stats["delivered"], stats["failed"], stats["dropped"]) == (53, 0, 0)
            assert distinct_ids(reader) == (53, 53)
        finally:
            reader.dispose()

    def test_connections_broken_by_a_restart(self, postgres_engine: sa.Engine) -> None:
        """Pooled connections cut by a restart are replaced; nothing is lost or doubled."""
        from tests._postgres import restart_postgres

        url = postgres_engine.url.render_as_string(hide_password=False)
        reader = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            obs.configure(url)
            calls_are_unaffected(5, "before")
            assert obs.flush()
            restart_postgres()
            calls_are_unaffected(5, "after")
            assert obs.flush(timeout=60.0)
            stats = obs.stats()
            assert (stats["delivered"], stats["failed"]) == (12, 0)
            assert distinct_ids(reader) == (12, 12)
        finally:
            reader.dispose()
