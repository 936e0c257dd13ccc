"""obs.once() and obs.purge_idempotency_keys() on a SQLite file (the PostgreSQL side is
in tests/acceptance/test_webhook_concurrency.py)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import obs_sdk as obs
from obs_sdk.testing import capture

USER = obs.Actor.user("u_1", name="Ada")


@obs.audited("payment.recorded", resource=obs.Resource("invoice", "{invoice_id}"))
def record_payment(invoice_id: str) -> str:
    return invoice_id


@obs.tracked("payment_recorded", properties={"invoice": "{invoice_id}"})
def track_payment(invoice_id: str) -> str:
    return invoice_id


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[sa.Engine]:
    """obs_sdk configured on a SQLite file, and an app engine on the same file."""
    obs.configure(database=sqlite_url)
    app_engine = sa.create_engine(sqlite_url)
    yield app_engine
    app_engine.dispose()


@pytest.fixture
def Sessions(engine: sa.Engine) -> sessionmaker[Session]:
    """A sessionmaker on the app engine."""
    return sessionmaker(engine)


def keys_in(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT key FROM obs_idempotency_keys")).scalars())


def run_once(Sessions: sessionmaker[Session], key: str) -> bool:
    """One committed transaction entering *key*; return what once() yielded."""
    with Sessions() as session, session.begin(), obs.once(session, key) as first:
        return first


class TestFirstTime:
    def test_first_then_duplicate(self, Sessions):
        """The first transaction with a key gets True; after its commit the next gets False."""
        assert [run_once(Sessions, "k1") for _ in range(3)] == [True, False, False]

    def test_keys_are_independent(self, Sessions):
        """Two keys are each seen for the first time once."""
        assert (run_once(Sessions, "a"), run_once(Sessions, "b")) == (True, True)

    def test_key_commits_with_the_work(self, Sessions, engine):
        """The key row is committed by the caller's commit, together with its work."""
        run_once(Sessions, "stripe:evt_1")

        assert keys_in(engine) == ["stripe:evt_1"]

    def test_keyword_key(self, Sessions):
        """once(session, key=...) works as SPEC writes it."""
        with Sessions() as session, session.begin():
            with obs.once(session, key="kw") as first:
                assert first is True


class TestRollback:
    def test_first_statement_rolled_back_retry_runs(self, Sessions, engine):
        """once() as a transaction's first statement rolls back with it: the retry runs."""
        with Sessions() as session:
            session.begin()
            with obs.once(session, "stripe:evt_rb") as first:
                assert first
            session.rollback()

        assert keys_in(engine) == []
        assert run_once(Sessions, "stripe:evt_rb") is True

    def test_body_raises_rolls_back_key(self, Sessions, engine):
        """An exception in the block propagates unchanged and the key is not kept."""
        boom = RuntimeError("handler failed")
        with pytest.raises(RuntimeError) as caught:
            with Sessions() as session, session.begin(), obs.once(session, "k") as first:
                assert first
                raise boom

        assert caught.value is boom
        assert keys_in(engine) == []


class TestSuppression:
    def test_repeated_key_records_nothing(self, Sessions):
        """Inside a repeated key, audits, tracked events and record_audit are suppressed."""
        run_once(Sessions, "k")
        with capture() as cap, obs.scope(actor=USER):
            with Sessions() as session, session.begin(), obs.once(session, "k") as first:
                assert first is False
                record_payment("in_1")
                track_payment("in_1")
                obs.record_audit("manual.entry")
                obs.track("manual_event")

        assert cap.as_dicts() == []

    def test_repeated_key_meters_nothing(self, Sessions):
        """metered_storage inside a repeated key charges nothing; the first time it does."""
        for size in (100, 500):  # the repeat would grow the object, if it were metered
            with Sessions() as session, session.begin(), obs.once(session, "upload:1"):
                with obs.metered_storage(session, object_id="doc_1", bytes=size, owner="org_1"):
                    pass

        assert obs.storage_usage("org_1") == 100

    def test_suppression_ends_with_the_block(self, Sessions):
        """After a repeated key's block, records are made again."""
        run_once(Sessions, "k")
        with capture() as cap, obs.scope(actor=USER):
            with Sessions() as session, session.begin():
                with obs.once(session, "k"):
                    record_payment("in_1")
            record_payment("in_2")

        assert [a["resource_id"] for a in cap.audits] == ["in_2"]

    def test_first_time_records_join_the_transaction(self, Sessions):
        """Inside a first-time key, success records wait for the commit."""
        with capture() as cap, obs.scope(actor=USER):
            with Sessions() as session, session.begin(), obs.once(session, "k"):
                record_payment("in_1")
                track_payment("in_1")
                assert cap.as_dicts() == []

        assert [a["action"] for a in cap.audits] == ["payment.recorded"]
        assert [e["event"] for e in cap.events] == ["payment_recorded"]

    def test_first_time_rollback_drops_records(self, Sessions):
        """A first-time key whose transaction rolls back sends nothing."""
        with capture() as cap, obs.scope(actor=USER):
            with Sessions() as session:
                session.begin()
                with obs.once(session, "k"):
                    record_payment("in_1")
                    track_payment("in_1")
                session.rollback()

        assert cap.as_dicts() == []


def event_uuids(Sessions: sessionmaker[Session], key: str, *names: str) -> list[str]:
    """Track *names* inside a first-time *key*; return the captured event uuids."""
    with capture() as cap, obs.scope(actor=USER):
        with Sessions() as session, session.begin(), obs.once(session, key) as first:
            assert first
            for name in names:
                obs.track(name)
    return [str(e["uuid"]) for e in cap.events]


class TestEventUuids:
    def test_uuid_is_version_5_inside_a_key(self, Sessions):
        """An event made inside a key carries a name-based (v5) uuid."""
        (only,) = event_uuids(Sessions, "k", "paid")

        assert only[14] == "5"

    def test_same_uuids_when_a_purged_key_runs_again(self, Sessions):
        """Two runs of one key that both ran send identical uuids, event for event."""
        first = event_uuids(Sessions, "stripe:evt_9", "paid", "paid", "emailed")
        with Sessions() as session, session.begin():
            assert obs.purge_idempotency_keys(session, older_than=datetime.timedelta(0)) == 1
        second = event_uuids(Sessions, "stripe:evt_9", "paid", "paid", "emailed")

        assert first == second
        assert len(set(first)) == 3  # n counts each name: two "paid" events differ

    def test_same_uuids_in_another_database(self, Sessions, tmp_path: Path):
        """The uuid depends on the key, name and count only: not on the database or time."""
        first = event_uuids(Sessions, "k", "paid")
        other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
        obs.create_tables(other)
        second = event_uuids(sessionmaker(other), "k", "paid")
        other.dispose()

        assert first == second

    def test_other_key_other_uuid(self, Sessions):
        """Another key gives another uuid for the same event."""
        assert event_uuids(Sessions, "k1", "paid") != event_uuids(Sessions, "k2", "paid")

    def test_event_from_a_worker_thread_of_a_rolled_back_attempt(self, Sessions):
        """An event sent from a thread during an attempt that rolled back has the uuid the
        successful retry's event has, so PostHog dedupes it."""
        uuids = []
        for attempt in ("rolled back", "committed"):
            with capture() as cap, obs.scope(actor=USER):
                with Sessions() as session:
                    session.begin()
                    with obs.once(session, "stripe:evt_t") as first:
                        assert first
                        # Off the session's thread the event is queued at once, not held.
                        worker = threading.Thread(target=obs.with_scope(obs.track), args=("paid",))
                        worker.start()
                        worker.join()
                    if attempt == "rolled back":
                        session.rollback()
                    else:
                        session.commit()
            uuids.append([str(e["uuid"]) for e in cap.events])

        assert len(uuids[0]) == 1
        assert uuids[0] == uuids[1]

    def test_counter_is_thread_safe(self, Sessions):
        """Events made on many threads inside one key all get distinct uuids."""
        with capture() as cap, obs.scope(actor=USER):
            with Sessions() as session, session.begin(), obs.once(session, "k"):

                def send() -> None:
                    for _ in range(50):
                        obs.track("paid")

                workers = [threading.Thread(target=obs.with_scope(send)) for _ in range(4)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()

        assert len({str(e["uuid"]) for e in cap.events}) == 200


class TestKeyWriteFailure:
    def test_missing_table_raises_and_body_does_not_run(self, Sessions, engine):
        """When the key cannot be written, once() raises the database error."""
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_idempotency_keys"))
        ran = []

        with pytest.raises(sa_exc.OperationalError, match="obs_idempotency_keys"):
            with Sessions() as session, session.begin(), obs.once(session, "k"):
                ran.append(True)

        assert ran == []


class TestPurge:
    def age_key(self, engine: sa.Engine, key: str, days: int) -> None:
        old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)
        with Session(engine) as session, session.begin():
            session.execute(
                sa.text("UPDATE obs_idempotency_keys SET created_at = :t WHERE key = :k"),
                {"t": old.replace(tzinfo=None), "k": key},
            )

    def test_default_retention_keeps_recent_keys(self, Sessions, engine):
        """Keys younger than the configured retention (30 days) stay."""
        run_once(Sessions, "new")
        run_once(Sessions, "old")
        self.age_key(engine, "old", 31)

        with Sessions() as session, session.begin():
            assert obs.purge_idempotency_keys(session) == 1

        assert keys_in(engine) == ["new"]

    def test_configured_retention(self, sqlite_url, engine):
        """configure(idempotency_retention=...) is the default age."""
        obs.configure(database=sqlite_url, idempotency_retention=datetime.timedelta(days=2))
        Sessions = sessionmaker(engine)
        run_once(Sessions, "three_days")
        run_once(Sessions, "one_day")
        self.age_key(engine, "three_days", 3)
        self.age_key(engine, "one_day", 1)

        with Sessions() as session, session.begin():
            assert obs.purge_idempotency_keys(session) == 1

        assert keys_in(engine) == ["one_day"]

    def test_purged_key_runs_again(self, Sessions):
        """After a purge the key is new again (why retention must outlast Stripe's retries)."""
        run_once(Sessions, "k")
        with Sessions() as session, session.begin():
            obs.purge_idempotency_keys(session, older_than=datetime.timedelta(0))

        assert run_once(Sessions, "k") is True

    def test_cutoff_datetime(self, Sessions, engine):
        """older_than may be an aware cutoff datetime."""
        run_once(Sessions, "k")
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)

        with Sessions() as session, session.begin():
            assert obs.purge_idempotency_keys(session, older_than=future) == 1

    @pytest.mark.parametrize(
        "older_than",
        [datetime.timedelta(days=-1), datetime.datetime(2026, 1, 1), 30, "30d"],
    )
    def test_bad_older_than(self, Sessions, older_than):
        """A negative age, a naive datetime or a number is a ConfigurationError."""
        with Sessions() as session, pytest.raises(obs.ConfigurationError, match="older_than"):
            obs.purge_idempotency_keys(session, older_than=older_than)


class TestArguments:
    @pytest.mark.parametrize("key", ["", None, 42, "x" * 256])
    def test_bad_key(self, Sessions, key):
        """A key that is not a non-empty string of at most 255 characters is refused."""
        with Sessions() as session, pytest.raises(obs.ConfigurationError, match="key"):
            obs.once(session, key)

    def test_not_a_session(self, engine):
        """A Connection or Engine is refused with a message naming what once() takes."""
        with engine.connect() as conn, pytest.raises(obs.ConfigurationError, match="Session"):
            obs.once(conn, "k")


@pytest.fixture
async def AsyncSessions(sqlite_url: str):
    """obs_sdk configured on an aiosqlite engine; an async_sessionmaker on it."""
    async_engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    obs.configure(database=async_engine)
    yield async_sessionmaker(async_engine)
    await async_engine.dispose()


async def arun_once(AsyncSessions: async_sessionmaker[AsyncSession], key: str) -> bool:
    async with AsyncSessions() as session, session.begin(), obs.once(session, key) as first:
        return first


class TestAsync:
    async def test_first_then_duplicate(self, AsyncSessions):
        """async with once() on an AsyncSession: True once, then False."""
        assert [await arun_once(AsyncSessions, "k") for _ in range(2)] == [True, False]

    async def test_rollback_then_retry(self, AsyncSessions):
        """A rolled-back async transaction does not keep the key."""
        async with AsyncSessions() as session:
            await session.begin()
            async with obs.once(session, "k") as first:
                assert first
            await session.rollback()

        assert await arun_once(AsyncSessions, "k") is True

    async def test_records_join_and_repeat_suppressed(self, AsyncSessions):
        """Records inside a first-time key wait for the commit; a repeat records nothing."""
        with capture() as cap, obs.scope(actor=USER):
            for _ in range(2):
                async with AsyncSessions() as session, session.begin():
                    async with obs.once(session, "k"):
                        before = len(cap.audits)
                        record_payment("in_1")
                        assert len(cap.audits) == before

        assert [a["resource_id"] for a in cap.audits] == ["in_1"]

    async def test_plain_with_on_async_session_is_refused(self, AsyncSessions):
        """`with` (not `async with`) on an AsyncSession is a ConfigurationError."""
        async with AsyncSessions() as session:
            with pytest.raises(obs.ConfigurationError, match="async with"):
                with obs.once(session, "k"):
                    pass
