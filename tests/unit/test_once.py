"""obs.once() and obs.purge_idempotency_keys() on a SQLite file (the PostgreSQL side is
in tests/acceptance/test_webhook_concurrency.py)."""

from __future__ import annotations

import datetime
import logging
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
    """One committed transaction entering *key*; return what once() yielded, as a bool."""
    with Sessions() as session, session.begin(), obs.once(session, key) as first:
        return bool(first)


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
                assert first


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
                assert not first
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

    def test_repeated_key_meters_nothing_in_nested_blocks(self, Sessions):
        """A scope, suppressed() or metered block opened inside a repeated key is still
        inside it: a charge there (here of a fresh object id) is not made again."""
        for attempt in range(2):
            with Sessions() as session, session.begin(), obs.once(session, "upload:2") as first:
                with obs.scope(organization="org_1"), obs.suppressed():
                    with obs.metered_storage(session, object_id=f"doc_{attempt}", bytes=100):
                        assert bool(first) is (attempt == 0)

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

    def test_late_event_from_a_worker_thread_of_a_rolled_back_attempt(self, Sessions):
        """A worker thread's event made after its attempt rolled back and its scope ended is
        sent on its own (late); it has the uuid the successful retry's event has (held to
        that commit), so PostHog dedupes it."""
        uuids = []
        for attempt in ("rolled back", "committed"):
            ended = threading.Event()

            def send_paid(wait: threading.Event) -> None:
                wait.wait(timeout=30)
                obs.track("paid")

            with capture() as cap, Sessions() as session:
                with obs.scope(actor=USER, session=session):
                    session.begin()
                    with obs.once(session, "stripe:evt_t") as first:
                        assert first
                        worker = threading.Thread(target=obs.with_scope(send_paid), args=(ended,))
                        worker.start()
                        if attempt == "committed":
                            ended.set()
                            worker.join()
                    getattr(session, "rollback" if attempt == "rolled back" else "commit")()
                ended.set()
                worker.join()
            uuids.append([str(e["uuid"]) for e in cap.events])

        assert len(uuids[0]) == 1
        assert uuids[0] == uuids[1]
        assert obs.stats()["late"] == 1

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
        return bool(first)


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

    async def test_repeated_key_meters_nothing(self, AsyncSessions):
        """async with metered_storage inside a repeated key charges nothing; the first does."""
        for size in (100, 500):  # the repeat would grow the object, if it were metered
            async with AsyncSessions() as session, session.begin():
                async with obs.once(session, "upload:1"):
                    async with obs.metered_storage(
                        session, object_id="doc_1", bytes=size, owner="org_1"
                    ):
                        pass

        async with AsyncSessions() as session:
            usage = await session.run_sync(lambda s: obs.storage_usage("org_1", s))
        assert usage == 100

    async def test_plain_with_on_async_session_is_refused(self, AsyncSessions):
        """`with` (not `async with`) on an AsyncSession is a ConfigurationError."""
        async with AsyncSessions() as session:
            with pytest.raises(obs.ConfigurationError, match="async with"):
                with obs.once(session, "k"):
                    pass


def unread_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "obs_sdk" and r.levelno == logging.WARNING and "never read" in r.getMessage()
    ]


class TestFlag:
    def test_truth_equality_and_repr(self, Sessions):
        """The flag is true the first time only, equals True/False and says which it is."""
        flags = []
        for _ in range(2):
            with Sessions() as session, session.begin(), obs.once(session, "k") as first:
                flags.append(first)

        assert [bool(f) for f in flags] == [True, False]
        assert flags == [True, False]
        assert flags[0] != False  # noqa: E712
        assert (flags[0] == 1, flags[1] == 0, flags[0] == "yes") == (True, True, False)
        assert {flags[0]: "a"}[True] == "a"  # hashes like the bool it equals
        assert [repr(f) for f in flags] == ["<obs.once 'k': first>", "<obs.once 'k': duplicate>"]

    @pytest.mark.parametrize(
        "read",
        [bool, lambda flag: not flag, lambda flag: flag == False],  # noqa: E712
    )
    def test_a_read_duplicate_is_quiet(self, Sessions, caplog, read):
        """Reading the duplicate's flag (truth, not, ==) means the caller decided: no warning."""
        run_once(Sessions, "k")
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            with Sessions() as session, session.begin(), obs.once(session, "k") as first:
                read(first)

        assert unread_warnings(caplog) == []
        assert obs.stats()["duplicate_unread"] == 0

    def test_an_unread_first_time_is_quiet(self, Sessions, caplog):
        """The first delivery runs its block as it should: not reading its flag is harmless."""
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            with Sessions() as session, session.begin(), obs.once(session, "k"):
                pass

        assert unread_warnings(caplog) == []

    def test_unread_duplicate_warns_each_time_and_counts(self, Sessions, caplog):
        """Each duplicate whose flag was never read warns (naming the key) and is counted,
        also when its block raised."""
        run_once(Sessions, "stripe:evt_1")
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            with Sessions() as session, session.begin(), obs.once(session, "stripe:evt_1"):
                pass
            with pytest.raises(RuntimeError):
                with Sessions() as session, session.begin(), obs.once(session, "stripe:evt_1"):
                    raise RuntimeError("duplicate work failed")

        warnings = unread_warnings(caplog)
        assert len(warnings) == 2
        assert all("'stripe:evt_1'" in w for w in warnings)
        assert obs.stats()["duplicate_unread"] == 2


class Invoices:
    """Methods decorated on either side of classmethod/staticmethod."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    @obs.idempotent(key="invoice:{invoice_id}")
    def pay(self, invoice_id: str, session: Session) -> str:
        self.ran.append(invoice_id)
        return "paid"

    @classmethod
    @obs.idempotent(key="class:{invoice_id}")
    def pay_below(cls, invoice_id: str, session: Session) -> str:
        return cls.__name__

    @obs.idempotent(key="class-above:{invoice_id}")
    @classmethod
    def pay_above(cls, invoice_id: str, session: Session) -> str:
        return cls.__name__

    @obs.idempotent(key="static:{invoice_id}")
    @staticmethod
    def pay_static(invoice_id: str, session: Session) -> str:
        return invoice_id


class TestIdempotent:
    def test_methods(self, Sessions):
        """Instance, class and static methods (either side of the method decorator) work."""
        ran: list[str] = []
        invoices = Invoices(ran)
        calls = [
            lambda s: invoices.pay("in_1", s),
            lambda s: Invoices.pay_below("in_1", s),
            lambda s: Invoices.pay_above("in_1", session=s),
            lambda s: Invoices.pay_static("in_1", s),
        ]
        results = []
        for _ in range(2):
            for call in calls:
                with Sessions() as session, session.begin():
                    results.append(call(session))

        assert results == ["paid", "Invoices", "Invoices", "in_1", None, None, None, None]
        assert ran == ["in_1"]

    def test_key_from_keywords_defaults_and_format_specs(self, Sessions, engine):
        """Fields read keyword arguments and defaults; a format spec applies."""

        @obs.idempotent(key="export:{kind}:{n:04d}")
        def export(session: Session, n: int, kind: str = "csv") -> int:
            return n

        with Sessions() as session, session.begin():
            assert export(session, n=7) == 7

        assert keys_in(engine) == ["export:csv:0007"]

    def test_callable_key(self, Sessions, engine):
        """The key may be a callable taking the call (e.g. to hash a long key)."""

        @obs.idempotent(key=lambda call: f"report:{len(call.args['rows'])}")
        def report(rows: list[int], session: Session) -> str:
            return "sent"

        with Sessions() as session, session.begin():
            assert report([1, 2, 3], session) == "sent"

        assert keys_in(engine) == ["report:3"]

    def test_none_field_is_refused(self, Sessions):
        """A field that is None would let unrelated calls share one key: it raises."""
        ran = []

        @obs.idempotent(key="stripe:{event_id}")
        def handle(event_id: str | None, session: Session) -> None:
            ran.append(event_id)

        with Sessions() as session, pytest.raises(obs.ConfigurationError, match="None"):
            handle(None, session)
        assert ran == []

    def test_unreadable_field_raises_naming_the_function(self, Sessions):
        """A field the argument does not have raises (never runs without a key)."""

        @obs.idempotent(key="stripe:{event.id}")
        def handle(event: object, session: Session) -> None:
            raise AssertionError("must not run")

        with Sessions() as session, pytest.raises(obs.ConfigurationError, match="handle") as error:
            handle(object(), session)
        assert isinstance(error.value.__cause__, AttributeError)

    def test_session_argument_none_falls_back_to_the_scope(self, Sessions, engine):
        """A `session` parameter left None means: the scope's session."""

        @obs.idempotent(key="job:{name}")
        def job(name: str, session: Session | None = None) -> str:
            return name

        with Sessions() as session, session.begin(), obs.scope(session=session):
            assert job("nightly") == "nightly"

        assert keys_in(engine) == ["job:nightly"]

    def test_not_a_session(self):
        """A `session` argument that is not a SQLAlchemy session is refused."""

        @obs.idempotent(key="job:{name}")
        def job(name: str, session: object) -> None:
            raise AssertionError("must not run")

        with pytest.raises(obs.ConfigurationError, match="Session or AsyncSession"):
            job("x", session="not a session")

    async def test_plain_function_with_an_async_session(self, AsyncSessions):
        """A plain function cannot write the key on an AsyncSession: make it async."""

        @obs.idempotent(key="job:{name}")
        def job(name: str) -> None:
            raise AssertionError("must not run")

        async with AsyncSessions() as session:
            with obs.scope(session=session), pytest.raises(obs.ConfigurationError, match="async"):
                job("x")

    @pytest.mark.parametrize("key", ["", None, 42])
    def test_bad_key_argument(self, key):
        """The key must be a non-empty template string (or a callable)."""
        with pytest.raises(obs.ConfigurationError, match="key"):
            obs.idempotent(key=key)

    def test_generators_are_refused(self):
        """A generator's body runs after the call returned, outside the key: refused."""

        def rows(session: Session) -> Iterator[int]:
            yield 1

        with pytest.raises(obs.ConfigurationError, match="generator"):
            obs.idempotent(key="rows")(rows)

    def test_format_spec_that_does_not_fit_raises(self, Sessions):
        """A format spec the value cannot take raises instead of running without a key."""

        @obs.idempotent(key="export:{n:04d}")
        def export(n: object, session: Session) -> None:
            raise AssertionError("must not run")

        with Sessions() as session, pytest.raises(obs.ConfigurationError, match="export"):
            export("seven", session)

    async def test_async_function_with_the_sync_side_of_an_async_session(self, AsyncSessions):
        """An async function given an AsyncSession's sync_session writes through the async one."""
        ran = []

        @obs.idempotent(key="job:{name}")
        async def job(name: str, session: Session) -> str:
            ran.append(name)
            return name

        results = []
        for _ in range(2):
            async with AsyncSessions() as session, session.begin():
                results.append(await job("nightly", session.sync_session))

        assert (results, ran) == (["nightly", None], ["nightly"])
