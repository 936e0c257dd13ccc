"""SPEC "Audit records" rules 1-7 end to end, on a SQLite file and on the real PostgreSQL.

Every test configures obs_sdk on the ``database_url`` fixture, drives the public API and
reads the trail back with SQL or ``obs.audit_log`` from a connection of its own.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk.testing import SteppingClock
from tests.support.databases import async_url

pytestmark = pytest.mark.acceptance

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 1, 1, tzinfo=UTC)  # SteppingClock's default start

app_md = sa.MetaData()
app_items = sa.Table(
    "app_items",
    app_md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50)),
)


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    """An engine of the test's own on the database (NullPool: it holds no connection)."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def app_engine(database_url: str) -> Iterator[sa.Engine]:
    """The application's engine on the same database, with its app_items table."""
    engine = sa.create_engine(database_url)
    app_md.create_all(engine)
    yield engine
    engine.dispose()


def trail(engine: sa.Engine, **filters: Any) -> list[obs.AuditRecord]:
    """Every audit record visible to a fresh connection, oldest first."""
    return obs.audit_log(engine, limit=10_000, order="asc", **filters)


def actions(engine: sa.Engine) -> list[tuple[str, str]]:
    return [(r.action, r.outcome) for r in trail(engine)]


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str, *, fail: bool = False) -> str:
    if fail:
        raise LookupError(file_id)
    return f"bytes of {file_id}"


@obs.audited("file.deleted", resource=obs.Resource("file", "{file_id}"), when="failure")
def delete_or_fail(file_id: str, *, fail: bool) -> None:
    if fail:
        raise PermissionError(file_id)


@obs.audited("file.shared", resource=obs.Resource("file", "{file_id}"), when="always")
def share(file_id: str, *, fail: bool = False) -> str:
    if fail:
        raise TimeoutError(file_id)
    return "link"


class TestSuccessOnly:
    """Rule 1: a success record only after a normal return; failures only when asked."""

    def test_raising_function_writes_no_success_row(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """A function that raises writes nothing under when="success" and its error passes."""
        obs.configure(database_url)
        with pytest.raises(LookupError) as raised:
            download("f_1", fail=True)
        assert raised.value.args == ("f_1",)
        assert download("f_2") == "bytes of f_2"
        assert obs.flush()
        assert [(r.resource_id, r.outcome) for r in trail(reader)] == [("f_2", "success")]

    def test_when_failure_records_failures_with_error_type(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """when="failure" writes a failure row with the exception class name, nothing on success."""
        obs.configure(database_url)
        delete_or_fail("f_ok", fail=False)
        with pytest.raises(PermissionError):
            delete_or_fail("f_bad", fail=True)
        assert obs.flush()
        rows = trail(reader)
        assert [(r.resource_id, r.outcome, r.error_type) for r in rows] == [
            ("f_bad", "failure", "PermissionError")
        ]

    def test_when_always_records_both(self, database_url: str, reader: sa.Engine) -> None:
        """when="always" writes a success row (error_type NULL) and a failure row."""
        obs.configure(database_url)
        assert share("f_1") == "link"
        with pytest.raises(TimeoutError):
            share("f_2", fail=True)
        assert obs.flush()
        # Sorted: two records in the same millisecond have UUIDv7 ids in random order.
        rows = sorted(trail(reader), key=lambda r: r.resource_id or "")
        assert [(r.resource_id, r.outcome, r.error_type) for r in rows] == [
            ("f_1", "success", None),
            ("f_2", "failure", "TimeoutError"),
        ]


class TestTransactionAware:
    """Rule 2: success records ride on the scope's session; failures never do."""

    def test_success_record_is_inserted_at_commit(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """Inside scope(session=...) the record waits for commit, then is there without flush."""
        obs.configure(database_url)
        with Session(app_engine) as session, obs.scope(session=session):
            session.execute(app_items.insert().values(id=1, name="a"))
            download("f_tx")
            assert obs.stats()["submitted"] == 0  # held, not queued
            assert actions(reader) == []
            session.commit()
        assert actions(reader) == [("file.downloaded", "success")]
        # Announced after the commit (for the other sinks), already stored: nothing re-written.
        assert obs.flush()
        stats = obs.stats()
        assert (
            stats["submitted"],
            stats["delivered"],
            stats["by_sink"]["database"]["delivered"],
        ) == (
            1,
            1,
            0,
        )
        assert actions(reader) == [("file.downloaded", "success")]

    def test_rollback_drops_success_records(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """A rolled-back transaction leaves no success record, even after a flush."""
        obs.configure(database_url)
        with Session(app_engine) as session, obs.scope(session=session):
            session.execute(app_items.insert().values(id=1, name="a"))
            download("f_rolled_back")
            session.rollback()
        assert obs.flush()
        assert actions(reader) == []
        assert obs.stats()["submitted"] == 0

    def test_record_before_any_sql_rides_the_next_transaction_and_nothing_begins(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """A record made before the session began waits for the transaction that comes next:
        obs_sdk begins nothing, so the caller's own `with session.begin():` still works."""
        obs.configure(database_url)
        with Session(app_engine) as session, obs.scope(session=session):
            download("f_1")
            assert not session.in_transaction()
            with session.begin():  # raised "A transaction is already begun" before
                session.execute(app_items.insert().values(id=1, name="a"))
            assert actions(reader) == [("file.downloaded", "success")]
        with Session(app_engine) as session, obs.scope(session=session):
            download("f_2")
            with pytest.raises(KeyError), session.begin():
                session.execute(app_items.insert().values(id=2, name="b"))
                raise KeyError("the transaction it joined rolled back")
        assert obs.flush()
        assert [r.resource_id for r in trail(reader)] == ["f_1"]
        assert obs.stats()["rolled_back"] == 1

    def test_scope_without_any_sql_queues_its_records_at_exit(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """No transaction ever began (a download served from a cache): nothing to join, and
        a session closed without one fires no event, so the scope's exit queues them."""
        obs.configure(database_url)
        with Session(app_engine) as session:
            with obs.scope(session=session):
                download("f_cached")
                assert obs.stats()["submitted"] == 0
            assert obs.stats()["submitted"] == 1
        assert obs.flush()
        assert [r.resource_id for r in trail(reader)] == ["f_cached"]

    def test_failed_flush_at_commit_leaves_no_record(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """When the caller's commit fails (its flush breaks a key), the audit row goes with it."""
        obs.configure(database_url)
        with Session(app_engine) as session:
            session.execute(app_items.insert().values(id=1, name="a"))
            session.commit()
        item = type("Item", (), {})
        mappers = sa.orm.registry()  # its own registry: clear_mappers() would unmap every model
        mappers.map_imperatively(item, app_items)
        with Session(app_engine) as session, obs.scope(session=session):
            session.add(item(id=1, name="duplicate"))  # flushed only by commit()
            download("f_lost")
            with pytest.raises(sa.exc.IntegrityError):
                session.commit()
            session.rollback()
        mappers.dispose()
        assert obs.flush()
        assert actions(reader) == []

    def test_failure_record_is_queued_at_once(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """A failure record skips a doomed transaction: it arrives after flush."""
        obs.configure(database_url)
        with Session(app_engine) as session, obs.scope(session=session):
            session.execute(app_items.insert().values(id=1, name="a"))
            with pytest.raises(PermissionError):
                delete_or_fail("f_1", fail=True)
            assert obs.stats()["submitted"] == 1
            session.rollback()
        assert obs.flush()
        assert actions(reader) == [("file.deleted", "failure")]

    def test_record_on_another_thread_joins_the_transaction(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """A thread that inherited the scope joins its transaction: held, dropped by rollback."""
        obs.configure(database_url)
        for resource, end in (("f_rolled_back", Session.rollback), ("f_committed", Session.commit)):
            with Session(app_engine) as session, obs.scope(session=session):
                session.execute(app_items.delete())
                worker = threading.Thread(target=obs.with_scope(download), args=(resource,))
                worker.start()
                worker.join()
                assert obs.stats()["submitted"] == 0  # held, not queued
                end(session)
        assert obs.flush()
        assert [r.resource_id for r in trail(reader)] == ["f_committed"]
        assert obs.stats()["rolled_back"] == 1

    def test_async_session_commit_and_rollback(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """AsyncSession (aiosqlite / psycopg async): commit inserts a record, rollback drops it."""
        obs.configure(database_url)

        async def scenario() -> None:
            engine = create_async_engine(async_url(database_url))
            try:
                async with AsyncSession(engine) as session:
                    with obs.scope(session=session):
                        await session.execute(app_items.insert().values(id=1, name="a"))
                        download("f_commit")
                        await session.commit()
                async with AsyncSession(engine) as session:
                    with obs.scope(session=session):
                        await session.execute(app_items.insert().values(id=2, name="b"))
                        download("f_rollback")
                        await session.rollback()
            finally:
                await engine.dispose()

        asyncio.run(scenario())
        assert obs.flush()
        assert [r.resource_id for r in trail(reader)] == ["f_commit"]
        assert obs.stats()["submitted"] == 1  # the committed record, announced after commit

    def test_async_failed_flush_at_commit_leaves_no_record(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """AsyncSession: when the commit's flush breaks a key, the audit row goes with it."""
        obs.configure(database_url)
        with Session(app_engine) as session:
            session.execute(app_items.insert().values(id=1, name="a"))
            session.commit()
        item = type("AsyncItem", (), {})
        mappers = sa.orm.registry()
        mappers.map_imperatively(item, app_items)

        async def scenario() -> None:
            engine = create_async_engine(async_url(database_url))
            try:
                async with AsyncSession(engine) as session:
                    with obs.scope(session=session):
                        session.add(item(id=1, name="duplicate"))
                        download("f_lost")
                        with pytest.raises(sa.exc.IntegrityError):
                            await session.commit()
                        await session.rollback()
            finally:
                await engine.dispose()

        try:
            asyncio.run(scenario())
        finally:
            mappers.dispose()
        assert obs.flush()
        assert actions(reader) == []

    @pytest.mark.swallows_internal_errors
    def test_insert_failing_at_commit_never_fails_the_commit(
        self, database_url: str, tmp_path: Path, reader: sa.Engine
    ) -> None:
        """The session's database has no obs tables: the commit succeeds, the record is queued."""
        obs.configure(database_url)
        other = sa.create_engine(f"sqlite:///{tmp_path / 'app_only.db'}")
        app_md.create_all(other)
        try:
            with Session(other) as session, obs.scope(session=session):
                session.execute(app_items.insert().values(id=1, name="kept"))
                assert download("f_1") == "bytes of f_1"
                session.commit()
            with other.connect() as conn:
                assert conn.execute(sa.select(app_items.c.name)).scalars().all() == ["kept"]
        finally:
            other.dispose()
        assert obs.stats()["internal_errors"] == 1
        assert obs.flush()
        assert [r.resource_id for r in trail(reader)] == ["f_1"]
        assert obs.stats()["delivered"] == 1


class TestBatchRetry:
    """Rule 3: a bad record fails alone; the rest of its batch lands exactly once."""

    @pytest.mark.postgres
    @pytest.mark.swallows_internal_errors
    def test_a_refused_record_fails_alone_on_postgres(self, postgres_url: str) -> None:
        """PostgreSQL refuses one record of a batch: it fails, its neighbours are written.

        A NUL byte no longer does it (records are sanitized: tests/faults/
        test_postgres_values.py), so a trigger refuses the record, as a CHECK constraint
        or a policy of the database's owner would.
        """
        from tests._postgres import drop_test_tables

        drop_test_tables(postgres_url)
        reader = sa.create_engine(postgres_url, poolclass=sa.NullPool)
        try:
            obs.configure(postgres_url)
            with reader.begin() as conn:
                conn.execute(
                    sa.text(
                        "CREATE OR REPLACE FUNCTION obs_test_refuse() RETURNS trigger AS $$ "
                        "BEGIN IF NEW.metadata->>'refuse' = 'yes' THEN "
                        "RAISE EXCEPTION 'refused by policy'; END IF; RETURN NEW; END "
                        "$$ LANGUAGE plpgsql"
                    )
                )
                conn.execute(
                    sa.text(
                        "CREATE TRIGGER obs_test_refuse BEFORE INSERT ON obs_audit_log "
                        "FOR EACH ROW EXECUTE FUNCTION obs_test_refuse()"
                    )
                )
            obs.shutdown()  # stop the worker, so all 50 land in one batch
            for i in range(50):
                obs.record_audit(
                    "doc.viewed",
                    metadata={"i": i, "refuse": "yes" if i == 7 else "no", "note": "x\x00y"},
                )
            obs.configure(postgres_url)
            assert obs.flush()
            stats = obs.stats()
            assert (stats["delivered"], stats["failed"], stats["submitted"]) == (49, 1, 50)
            rows = trail(reader)
            assert sorted(r.metadata["i"] for r in rows) == [i for i in range(50) if i != 7]
            assert {r.metadata["note"] for r in rows} == {"x\ufffdy"}
            with reader.connect() as conn:
                count = conn.execute(sa.text("SELECT count(DISTINCT id) FROM obs_audit_log"))
                assert count.scalar() == 49
        finally:
            reader.dispose()
            drop_test_tables(postgres_url)
            with sa.create_engine(postgres_url, poolclass=sa.NullPool).begin() as conn:
                conn.execute(sa.text("DROP FUNCTION IF EXISTS obs_test_refuse() CASCADE"))


class TestNoActorInvented:
    """Rule 5: anonymous and system actors never get an actor_id."""

    def test_anonymous_and_system_actors(self, database_url: str, reader: sa.Engine) -> None:
        """No scope and Actor.anonymous give anonymous, NULL id; a system actor keeps its label."""
        obs.configure(database_url)
        download("f_no_scope")
        with obs.scope(actor=obs.Actor.anonymous("ph_123")):
            obs.record_audit(
                "file.downloaded",
                resource=obs.Resource("file", "f_shared"),
                metadata={"shared_by_user_id": "u_owner"},
            )
        with obs.scope(actor=obs.Actor.system("nightly-export")):
            download("f_export")
        with obs.scope(actor=obs.Actor.user("u_1", name="Ada", email="ada@example.com")):
            download("f_user")
        assert obs.flush()
        got = {
            r.resource_id: (r.actor_type, r.actor_id, r.actor_name, r.actor_email)
            for r in trail(reader)
        }
        assert got == {
            "f_no_scope": ("anonymous", None, None, None),
            "f_shared": ("anonymous", None, None, None),
            "f_export": ("system", None, "nightly-export", None),
            "f_user": ("user", "u_1", "Ada", "ada@example.com"),
        }
        shared = trail(reader, resource=("file", "f_shared"))
        assert shared[0].metadata == {"shared_by_user_id": "u_owner"}


class TestCleanExitAndFullQueue:
    """Rule 6: shutdown delivers everything; a full queue drops the newest and counts it."""

    def test_shutdown_delivers_what_is_queued(self, database_url: str, reader: sa.Engine) -> None:
        """Records made just before shutdown() are all in the table after it."""
        obs.configure(database_url)
        for i in range(1200):
            download(f"f_{i}")
        assert obs.shutdown()
        assert len(trail(reader)) == 1200

    def test_full_queue_counts_every_drop(self, database_url: str, reader: sa.Engine) -> None:
        """With queue_size=5, every record is either in the table or counted as dropped."""
        obs.configure(database_url, queue_size=5)
        made = 2000
        for i in range(made):
            download(f"f_{i}")
        assert obs.flush()
        stats = obs.stats()
        written = len(trail(reader))
        assert stats["submitted"] == made
        assert (stats["delivered"], stats["dropped"], stats["failed"]) == (
            written,
            made - written,
            0,
        )
        assert stats["dropped"] > 0


class TestSecrets:
    """Rule 7: secret-looking keys are redacted at any depth; big metadata is cut, keys kept."""

    def test_secrets_redacted_at_any_depth(self, database_url: str, reader: sa.Engine) -> None:
        """Case-insensitive, '-' read as '_', in nested dicts and dicts inside lists."""
        obs.configure(database_url, redact_keys=("ssn",))
        obs.record_audit(
            "key.rotated",
            metadata={
                "Api-Key": "k1",
                "nested": {"X-Auth-TOKEN": "t1", "plain": 1},
                "items": [{"client_secret": "s1", "name": "n"}, "passwd-ok?"],
                "SESSION_ID": "sid",
                "user_ssn": "123",
                "count": 3,
            },
        )
        assert obs.flush()
        (row,) = trail(reader)
        assert row.metadata == {
            "Api-Key": "[REDACTED]",
            "nested": {"X-Auth-TOKEN": "[REDACTED]", "plain": 1},
            "items": [{"client_secret": "[REDACTED]", "name": "n"}, "passwd-ok?"],
            "SESSION_ID": "[REDACTED]",
            "user_ssn": "[REDACTED]",
            "count": 3,
        }

    def test_oversized_metadata_is_truncated_keeping_keys(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Over max_metadata_bytes, long strings get a truncation marker and _truncated is set."""
        obs.configure(database_url, max_metadata_bytes=512)
        obs.record_audit("blob.saved", metadata={"body": "é" * 2000, "kind": "text", "n": 7})
        assert obs.flush()
        (row,) = trail(reader)
        meta = row.metadata
        assert set(meta) == {"body", "kind", "n", "_truncated"}
        assert (meta["kind"], meta["n"], meta["_truncated"]) == ("text", 7, True)
        assert "…[truncated " in meta["body"]
        assert meta["body"].endswith(" bytes]")
        assert meta["body"].startswith("é")


class TestAuditLog:
    """obs.audit_log(): filters, keyset pagination and aware UTC datetimes."""

    @pytest.fixture
    def populated(self, database_url: str) -> None:
        """Twelve records over four scopes, one millisecond apart (stepping clock)."""
        obs.configure(database_url, clock=SteppingClock())
        scopes = [
            obs.scope(actor=obs.Actor.user("u_1"), organization="org_1", workspace="ws_1"),
            obs.scope(actor=obs.Actor.user("u_2"), organization="org_1", workspace="ws_2"),
            obs.scope(actor=obs.Actor.service("svc_1"), organization="org_2", workspace="ws_3"),
            obs.scope(actor=obs.Actor.anonymous()),
        ]
        for i in range(12):
            with scopes[i % 4]:
                obs.record_audit(
                    "file.downloaded" if i % 3 else "file.deleted",
                    resource=obs.Resource("file", f"f_{i % 2}"),
                    metadata={"i": i},
                )
        assert obs.flush()

    @pytest.mark.usefixtures("populated")
    def test_each_filter(self, reader: sa.Engine) -> None:
        """organization, workspace, actor_id, resource (object or tuple) and action each filter."""

        def seq(**filters: Any) -> list[int]:
            return [r.metadata["i"] for r in trail(reader, **filters)]

        assert seq() == list(range(12))
        assert seq(organization="org_1") == [0, 1, 4, 5, 8, 9]
        assert seq(workspace="ws_2") == [1, 5, 9]
        assert seq(actor_id="svc_1") == [2, 6, 10]
        assert seq(resource=obs.Resource("file", "f_1")) == [1, 3, 5, 7, 9, 11]
        assert seq(resource=("file", "f_0")) == [0, 2, 4, 6, 8, 10]
        assert seq(action="file.deleted") == [0, 3, 6, 9]
        assert seq(organization="org_1", action="file.deleted") == [0, 9]

    @pytest.mark.usefixtures("populated")
    def test_keyset_pagination_with_after(self, reader: sa.Engine) -> None:
        """Pages of 5 chained with after= cover every record once, in order; ids as str work too."""
        seen: list[int] = []
        after: uuid.UUID | str | None = None
        pages = 0
        while True:
            page = obs.audit_log(reader, limit=5, after=after, order="asc")
            if not page:
                break
            pages += 1
            seen += [r.metadata["i"] for r in page]
            after = str(page[-1].id) if pages % 2 else page[-1].id
        assert (seen, pages) == (list(range(12)), 3)

    @pytest.mark.usefixtures("populated")
    def test_since_until_and_aware_utc(self, reader: sa.Engine) -> None:
        """since is inclusive, until exclusive, both aware; occurred_at reads back aware UTC."""
        rows = trail(reader)
        assert [r.occurred_at for r in rows] == [
            START + datetime.timedelta(milliseconds=i) for i in range(12)
        ]
        assert all(r.occurred_at.tzinfo is not None for r in rows)
        assert all(r.occurred_at.utcoffset() == datetime.timedelta(0) for r in rows)
        since = START + datetime.timedelta(milliseconds=3)
        until = START + datetime.timedelta(milliseconds=7)
        assert [r.metadata["i"] for r in trail(reader, since=since, until=until)] == [3, 4, 5, 6]
        # Another zone for the same instants selects the same rows.
        plus2 = datetime.timezone(datetime.timedelta(hours=2))
        got = trail(reader, since=since.astimezone(plus2), until=until.astimezone(plus2))
        assert [r.metadata["i"] for r in got] == [3, 4, 5, 6]

    def test_bad_limit_is_a_configuration_error(self, database_url: str, reader: sa.Engine) -> None:
        """A limit outside 1..10000 says to page with after=."""
        obs.configure(database_url)
        with pytest.raises(obs.ConfigurationError, match="after="):
            obs.audit_log(reader, limit=0)


class TestManualRecords:
    """record_audit follows the scope; record_audit_now and its async twin commit at once."""

    def test_record_audit_follows_the_scope(
        self, database_url: str, app_engine: sa.Engine, reader: sa.Engine
    ) -> None:
        """Scope fields are stamped; inside a session it joins the transaction (rollback drops)."""
        obs.configure(database_url, service="files-api")
        with obs.scope(actor=obs.Actor.user("u_1"), workspace="ws_1", request_id="req_1"):
            obs.record_audit("export.started", resource=obs.Resource("export", "e_1"))
            with Session(app_engine) as session, obs.scope(session=session):
                session.execute(app_items.insert().values(id=1, name="a"))
                obs.record_audit("export.kept")
                session.commit()
            with Session(app_engine) as session, obs.scope(session=session):
                session.execute(app_items.insert().values(id=2, name="b"))
                obs.record_audit("export.dropped")
                obs.record_audit("export.failed", outcome="failure")
                session.rollback()
        assert obs.flush()
        rows = {r.action: r for r in trail(reader)}
        assert sorted(rows) == ["export.failed", "export.kept", "export.started"]
        started = rows["export.started"]
        assert (started.actor_id, started.workspace_id, started.request_id, started.service) == (
            "u_1",
            "ws_1",
            "req_1",
            "files-api",
        )
        assert (started.resource_type, started.resource_id) == ("export", "e_1")

    def test_record_audit_now_is_visible_immediately(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """The row is committed before record_audit_now returns: another connection sees it."""
        obs.configure(database_url)
        with obs.scope(actor=obs.Actor.user("u_1")):
            obs.record_audit_now("credential.shown", resource=obs.Resource("api_key", "k_1"))
        rows = trail(reader)
        assert [(r.action, r.actor_id, r.resource_id) for r in rows] == [
            ("credential.shown", "u_1", "k_1")
        ]
        assert obs.flush()
        assert obs.stats()["submitted"] == 1  # announced for the other sinks, not re-written
        assert len(trail(reader)) == 1

    def test_record_audit_now_ignores_the_scope_session(
        self, database_url: str, tmp_path: Path, reader: sa.Engine
    ) -> None:
        """Inside a transaction that later rolls back, the row committed on its own is kept."""
        obs.configure(database_url)
        # SQLite has one writer per file: an app transaction holding the write lock on the
        # same file would make record_audit_now wait out the busy timeout, so the app writes
        # to a file of its own there.
        app_url = (
            f"sqlite:///{tmp_path / 'app.db'}"
            if database_url.startswith("sqlite")
            else database_url
        )
        app = sa.create_engine(app_url)
        app_md.create_all(app)
        try:
            with Session(app) as session, obs.scope(session=session):
                session.execute(app_items.insert().values(id=1, name="a"))
                obs.record_audit_now("permission.granted")
                assert actions(reader) == [("permission.granted", "success")]
                session.rollback()
        finally:
            app.dispose()
        assert actions(reader) == [("permission.granted", "success")]

    def test_record_audit_now_without_configure_raises(self) -> None:
        """Before configure() there is nowhere to write: AuditWriteError says to configure."""
        with pytest.raises(obs.AuditWriteError, match="configure"):
            obs.record_audit_now("credential.shown")

    def test_record_audit_now_table_dropped_raises(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """When the insert fails (table dropped), AuditWriteError reaches the caller."""
        obs.configure(database_url)
        with reader.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_audit_log"))
        with pytest.raises(obs.AuditWriteError, match=r"credential\.shown"):
            obs.record_audit_now("credential.shown")

    def test_arecord_audit_now_with_async_engine(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Configured with an AsyncEngine, arecord_audit_now commits before the await returns."""

        async def scenario() -> list[tuple[str, str]]:
            engine = create_async_engine(async_url(database_url))
            try:
                obs.configure(engine)
                await obs.arecord_audit_now("token.issued", outcome="failure")
                return actions(reader)
            finally:
                obs.shutdown()
                await engine.dispose()

        assert asyncio.run(scenario()) == [("token.issued", "failure")]

    def test_arecord_audit_now_with_sync_configuration(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Configured with a URL, arecord_audit_now still commits before returning."""
        obs.configure(database_url)
        asyncio.run(obs.arecord_audit_now("token.issued"))
        assert actions(reader) == [("token.issued", "success")]

    def test_arecord_audit_now_failures_raise(self, database_url: str, reader: sa.Engine) -> None:
        """Unconfigured, and with the table dropped, arecord_audit_now raises AuditWriteError."""
        with pytest.raises(obs.AuditWriteError, match="configure"):
            asyncio.run(obs.arecord_audit_now("token.issued"))

        async def dropped() -> None:
            engine = create_async_engine(async_url(database_url))
            try:
                obs.configure(engine)
                with reader.begin() as conn:
                    conn.execute(sa.text("DROP TABLE obs_audit_log"))
                await obs.arecord_audit_now("token.issued")
            finally:
                obs.shutdown()
                await engine.dispose()

        with pytest.raises(obs.AuditWriteError, match=r"token\.issued"):
            asyncio.run(dropped())
