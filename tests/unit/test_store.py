"""configure() and the SQL store: databases accepted, table creation, schema checks, lifecycle.

Tests that touch a database run on a SQLite file and on the real PostgreSQL
(``database_url``); argument checks need no database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

import posthog
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import obs_sdk as obs
from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk.testing import IncrementingIds

SPEC_COLUMNS = [
    "id",
    "occurred_at",
    "action",
    "outcome",
    "actor_type",
    "actor_id",
    "actor_name",
    "actor_email",
    "resource_type",
    "resource_id",
    "resource_name",
    "workspace_id",
    "organization_id",
    "ip",
    "user_agent",
    "request_id",
    "trace_id",
    "span_id",
    "service",
    "metadata",
    "error_type",
    "changes",  # schema version 2 (issue 17)
]


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    """An engine of the test's own (NullPool: it holds no connection between reads)."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def count(engine: sa.Engine, table: str = "obs_audit_log") -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


class TestDatabaseArgument:
    """configure(database=) takes a URL, an Engine or an AsyncEngine."""

    def test_url(self, database_url: str, reader: sa.Engine) -> None:
        """A URL string: tables are created and records land there."""
        obs.configure(database_url)
        obs.record_audit("a.b")
        assert obs.flush()
        assert count(reader) == 1

    def test_engine_is_used_and_left_open(self, database_url: str, reader: sa.Engine) -> None:
        """An app's Engine is written to and still works after shutdown; obs_sdk does not own it."""
        engine = sa.create_engine(database_url)
        try:
            obs.configure(engine)
            obs.record_audit("a.b")
            assert obs.shutdown()
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM obs_audit_log")).scalar() == 1
        finally:
            engine.dispose()

    def test_async_engine(self, database_url: str, reader: sa.Engine) -> None:
        """An AsyncEngine (aiosqlite / psycopg async): the worker writes to the same database."""
        if database_url.startswith("sqlite"):
            url = database_url.replace("sqlite://", "sqlite+aiosqlite://", 1)
        else:
            url = database_url.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1)

        async def scenario() -> None:
            engine = create_async_engine(url)
            try:
                obs.configure(engine)
                obs.record_audit("a.b")
                assert obs.flush()
            finally:
                obs.shutdown()
                await engine.dispose()

        asyncio.run(scenario())
        assert count(reader) == 1

    def test_table_has_the_spec_columns(self, database_url: str, reader: sa.Engine) -> None:
        """obs_audit_log has exactly SPEC's columns, id as primary key."""
        obs.configure(database_url)
        inspector = sa.inspect(reader)
        columns = [c["name"] for c in inspector.get_columns("obs_audit_log")]
        assert columns == SPEC_COLUMNS
        assert inspector.get_pk_constraint("obs_audit_log")["constrained_columns"] == ["id"]

    def test_table_prefix(self, database_url: str, reader: sa.Engine) -> None:
        """table_prefix names every table; audit_log reads the configured prefix."""
        obs.configure(database_url, table_prefix="app_obs_")
        obs.record_audit("a.b")
        assert obs.flush()
        assert count(reader, "app_obs_audit_log") == 1
        assert [r.action for r in obs.audit_log(reader)] == ["a.b"]
        assert "obs_audit_log" not in sa.inspect(reader).get_table_names()


class TestBadArguments:
    """Mistakes are a ConfigurationError whose message says what to fix."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"database": 42}, "URL string"),
            ({"database": "no such driver://x"}, "not a usable SQLAlchemy URL"),
            ({"database": "nosuchdialect://x"}, "not a usable SQLAlchemy URL"),
            ({"queue_size": 0}, "queue_size"),
            ({"queue_size": True}, "queue_size"),
            ({"max_metadata_bytes": 10}, "max_metadata_bytes"),
            ({"table_prefix": "obs-"}, "letters, digits and underscores"),
            ({"redact_keys": "token"}, "list of words"),
            ({"posthog": posthog}, "not the posthog module"),
            ({"posthog": object()}, "posthog.Posthog instance"),
            ({"storage_quota": -1}, "storage_quota"),
            ({"scope_provider": 3}, "scope_provider"),
        ],
    )
    def test_configuration_error(
        self, sqlite_url: str, kwargs: dict[str, Any], message: str
    ) -> None:
        """Each bad argument raises ConfigurationError (a ValueError) naming the fix."""
        kwargs.setdefault("database", sqlite_url)
        with pytest.raises(obs.ConfigurationError, match=message) as raised:
            obs.configure(**kwargs)
        assert isinstance(raised.value, ValueError)

    def test_unreachable_database_is_a_configuration_error(self, tmp_path: Path) -> None:
        """A database that cannot be opened fails configure(), not a later call."""
        with pytest.raises(obs.ConfigurationError, match="could not create its tables"):
            obs.configure(f"sqlite:///{tmp_path / 'missing-dir' / 'obs.db'}")


class TestSchema:
    """create_tables, the schema-version check and metadata() for Alembic."""

    def test_create_tables_false_on_an_empty_database(self, database_url: str) -> None:
        """Without tables, create_tables=False says how to create them."""
        with pytest.raises(obs.ConfigurationError, match=r"obs\.create_tables\(engine\)"):
            obs.configure(database_url, create_tables=False)

    def test_create_tables_then_configure_without_creating(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """obs.create_tables(engine) prepares the database for configure(create_tables=False)."""
        obs.create_tables(reader)
        obs.create_tables(reader)  # idempotent
        obs.configure(database_url, create_tables=False)
        obs.record_audit("a.b")
        assert obs.flush()
        assert count(reader) == 1

    @pytest.mark.parametrize("create", [True, False])
    def test_wrong_schema_version(self, database_url: str, reader: sa.Engine, create: bool) -> None:
        """Tables at another schema version fail configure() with a migration hint."""
        obs.create_tables(reader)
        with reader.begin() as conn:
            conn.execute(sa.text("UPDATE obs_schema_version SET version = 99"))
        with pytest.raises(obs.ConfigurationError, match=r"schema version 99.*migrate"):
            obs.configure(database_url, create_tables=create)

    def test_metadata_for_alembic(self, database_url: str, reader: sa.Engine) -> None:
        """obs.metadata(prefix) describes the tables configure() creates."""
        md = obs.metadata("obs_")
        assert "obs_audit_log" in md.tables
        md.create_all(reader)
        obs.configure(database_url, create_tables=False)
        obs.record_audit("a.b")
        assert obs.flush()
        assert count(reader) == 1


class TestLifecycle:
    """configure() twice, configure() after shutdown(), and shutdown's delivery."""

    def test_configure_twice_flushes_the_first(self, tmp_path: Path, database_url: str) -> None:
        """Records of the first configuration are in its database when configure() returns."""
        first = f"sqlite:///{tmp_path / 'first.db'}"
        obs.configure(first)
        for i in range(700):
            obs.record_audit("first", metadata={"i": i})
        obs.configure(database_url)
        first_engine = sa.create_engine(first, poolclass=sa.NullPool)
        second_engine = sa.create_engine(database_url, poolclass=sa.NullPool)
        try:
            assert count(first_engine) == 700
            obs.record_audit("second")
            assert obs.flush()
            assert count(first_engine) == 700
            assert [r.action for r in obs.audit_log(second_engine)] == ["second"]
            assert obs.stats()["submitted"] == 1
        finally:
            first_engine.dispose()
            second_engine.dispose()

    def test_configure_after_shutdown(self, database_url: str, reader: sa.Engine) -> None:
        """After shutdown() records wait; the next configure() delivers them."""
        obs.configure(database_url)
        obs.record_audit("before")
        assert obs.shutdown()
        obs.record_audit("between")
        assert obs.flush(timeout=0.1) is False
        assert count(reader) == 1
        obs.configure(database_url)
        obs.record_audit("after")
        assert obs.flush()
        assert sorted(r.action for r in obs.audit_log(reader)) == ["after", "before", "between"]


class TestIdCollisions:
    """ON CONFLICT (id) DO NOTHING keeps retries from duplicating; it never loses a record."""

    @pytest.mark.swallows_internal_errors
    def test_a_taken_id_is_replaced_logged_and_counted(
        self, database_url: str, reader: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A record whose fresh id is already in the table is written under a new id."""
        obs.configure(database_url, id_factory=IncrementingIds())
        for i in range(3):
            obs.record_audit("first", metadata={"i": i})
        assert obs.flush()
        obs.configure(database_url, id_factory=IncrementingIds())  # ids 1, 2, 3 again
        caplog.set_level(logging.WARNING, logger="obs_sdk")
        for i in range(4):
            obs.record_audit("second", metadata={"i": i})
        assert obs.flush()
        records = obs.audit_log(reader, limit=100)
        assert sorted((r.action, r.metadata["i"]) for r in records) == [
            ("first", 0),
            ("first", 1),
            ("first", 2),
            ("second", 0),
            ("second", 1),
            ("second", 2),
            ("second", 3),
        ]
        assert len({r.id for r in records}) == 7
        stats = obs.stats()
        assert (stats["delivered"], stats["failed"], stats["internal_errors"]) == (4, 0, 3)
        assert "id_collision" in caplog.text
        assert "ids collided" in caplog.text  # the exception logged with it

    def test_a_retry_that_finds_its_own_rows_is_no_collision(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """An export that wrote its rows but failed to say so is retried: nothing doubles.

        The retry's ON CONFLICT skips every row (the first attempt wrote them), and none
        is taken for a collision: no row is written twice under a new id.
        """
        obs.configure(database_url)
        (sink,) = dispatcher.sinks
        attempts = []
        original = sink.export

        def counted(batch: Any) -> None:
            attempts.append(len(batch))
            original(batch)

        def commit_then_fail(conn: sa.Connection) -> None:
            # The commit happens; the error surfaces anyway, as when a connection drops
            # before the server's answer arrives.
            if len(attempts) == 1:
                conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
                raise sa.exc.OperationalError("COMMIT", {}, Exception("connection reset"))

        sink.export = counted  # type: ignore[method-assign]
        # The engine the sink writes through (on a SQLite file, its own: see _sinks).
        sa.event.listen(sink.write_engine, "commit", commit_then_fail)  # type: ignore[attr-defined]
        for i in range(5):
            obs.record_audit("once", metadata={"i": i})
        assert obs.flush()
        assert attempts == [5, 5]
        assert sorted(r.metadata["i"] for r in obs.audit_log(reader)) == [0, 1, 2, 3, 4]
        stats = obs.stats()
        assert (stats["delivered"], stats["retried"], stats["internal_errors"]) == (5, 1, 0)

    @pytest.mark.swallows_internal_errors
    def test_record_audit_now_replaces_a_taken_id(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """record_audit_now never returns having skipped its record."""
        taken = uuid.UUID(int=7)
        obs.configure(database_url, id_factory=lambda ns: taken)
        obs.record_audit_now("key.shown")
        obs.record_audit_now("key.shown")
        ids = [r.id for r in obs.audit_log(reader)]
        assert len(ids) == 2
        assert taken in ids
        assert obs.stats()["internal_errors"] == 1


class TestLargeBatches:
    """A sink that fell behind writes large batches (one statement each): every row exact."""

    def test_a_backlog_leaves_in_large_batches_intact(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """3,000 records queued behind a locked table leave in large batches, each row as made."""
        from obs_sdk._delivery import _sinks

        sizes: list[int] = []
        insert = _sinks._DriverInsert.insert

        def counting(self: Any, conn: Any, rows: list[Any]) -> int:
            sizes.append(len(rows))
            return insert(self, conn, rows)

        obs.configure(database_url)
        actor = obs.Actor.user("u_1", name="Zoë", email="z@example.com")
        with (
            patch.object(_sinks._DriverInsert, "insert", counting),
            audit_table_locked(database_url),
            obs.scope(actor=actor, organization="org_1"),
        ):
            for i in range(3000):
                obs.record_audit(
                    "bulk.row",
                    resource=obs.Resource("doc", f"d_{i}"),
                    metadata={"i": i, "text": f"row {i}", "nested": {"ok": i % 2 == 0}},
                )
                if i % 500 == 499:
                    obs.flush(timeout=0.05)  # routed into the sink's queue, which cannot drain
        # How large the batches are depends on how the backlog was routed (timing), which
        # test_a_deep_queue_is_taken_in_large_batches pins; here a lower threshold makes
        # sure the statement over arrays carries some of them, whatever the timing.
        with (
            patch.object(_sinks._DriverInsert, "insert", counting),
            patch.object(_sinks, "UNNEST_FROM", 200),
        ):
            assert obs.flush(timeout=60.0)
        assert max(sizes) >= 200  # on PostgreSQL the statement over arrays was used
        stats = obs.stats()
        assert (stats["delivered"], stats["failed"], stats["dropped"]) == (3000, 0, 0)
        records = obs.audit_log(reader, limit=5000)
        assert len({r.id for r in records}) == 3000
        by_resource = {r.resource_id: r for r in records}
        for i in (0, 1499, 1500, 2999):
            record = by_resource[f"d_{i}"]
            assert record.metadata == {"i": i, "text": f"row {i}", "nested": {"ok": i % 2 == 0}}
            assert (record.actor_name, record.organization_id) == ("Zoë", "org_1")
            assert record.occurred_at.tzinfo is not None


def test_a_deep_queue_is_taken_in_large_batches() -> None:
    """A sink that fell behind takes half its queue at once (up to MAX_BATCH_SIZE), within bytes."""
    from obs_sdk._delivery._pipelines import BATCH_SIZE, MAX_BATCH_SIZE, take_batch

    def queue(n: int) -> deque[tuple[Any, int, bool]]:
        return deque((i, 100, False) for i in range(n))

    assert len(take_batch(queue(10), 10**9)) == 10
    assert len(take_batch(queue(800), 10**9)) == BATCH_SIZE
    deep = queue(4000)
    assert [item[0] for item in take_batch(deep, 10**9)] == list(range(2000))  # in order
    assert len(take_batch(queue(50_000), 10**9)) == MAX_BATCH_SIZE
    assert len(take_batch(queue(4000), 100 * 700)) == 700  # the byte budget wins
    assert len(take_batch(queue(4000), 10)) == 1  # one record always goes


@contextmanager
def audit_table_locked(url: str) -> Iterator[None]:
    """Another connection holds obs_audit_log: the database sink cannot write until the end."""
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        holder = sqlite3.connect(sa.engine.make_url(url).database or "", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            yield
            holder.execute("COMMIT")
        finally:
            holder.close()
        return
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE obs_audit_log IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()
