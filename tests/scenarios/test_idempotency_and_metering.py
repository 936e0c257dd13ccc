"""Idempotency and metering in the shapes that found issue 14's items 15 and 16.

15. ``obs.suppressed()`` (meant for audit and analytics records: a backfill, a health check)
    switched metering off too, so an upload inside it skipped the quota: a quota bypass.
16. ``with obs.once(session, key):`` without reading the flag ran a redelivered webhook's
    work a second time, silently. Now such a duplicate warns, and ``@obs.idempotent``
    skips a duplicate's body, so the mistake cannot be written.

Each runs on a SQLite file and on the real PostgreSQL (``database_url``); the concurrent
delivery runs five real threads, each with its own session.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import stripe
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk.testing import capture

ORG = "org_1"
USER = obs.Actor.user("u_1")
DELIVERIES = 5

app_metadata = sa.MetaData()
payments = sa.Table(
    "app_payments",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("invoice_id", sa.String(64), nullable=False),
)


def stripe_event(event_id: str, invoice_id: str = "in_1") -> Any:
    """A Stripe event object as a handler receives it (``event.id``, ``event.data.object``)."""
    return stripe.Event.construct_from(
        {
            "id": event_id,
            "object": "event",
            "type": "invoice.paid",
            "data": {"object": {"id": invoice_id, "object": "invoice", "amount_paid": 990}},
        },
        "sk_test_obs",
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """obs_sdk configured on the database (quota 100 bytes), and the app's engine on it."""
    obs.configure(database=database_url, storage_quota=100, audit_storage=True)
    # SQLite: writers queue on the database lock; let them wait as long as a slow test might.
    options: dict[str, Any] = (
        {"connect_args": {"timeout": 30}}
        if database_url.startswith("sqlite")
        else {"pool_size": DELIVERIES + 2}
    )
    app = sa.create_engine(database_url, **options)
    app_metadata.create_all(app)
    yield app
    app.dispose()


@pytest.fixture
async def async_sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """obs_sdk configured (quota 100 bytes); an async_sessionmaker on the same database."""
    obs.configure(database=database_url, storage_quota=100)
    async_url = database_url.replace("sqlite://", "sqlite+aiosqlite://")
    async_engine = create_async_engine(async_url)
    async with async_engine.begin() as conn:
        await conn.run_sync(app_metadata.create_all)
    yield async_sessionmaker(async_engine)
    await async_engine.dispose()


def usage(engine: sa.Engine, owner: str = ORG) -> int:
    with engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT bytes FROM obs_storage_usage WHERE owner = :o"), {"o": owner}
        ).scalar()
    return int(value or 0)


def rows(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def upload(engine: sa.Engine, object_id: str, nbytes: int, body: Callable[[], None]) -> None:
    """The app's upload: charge, store, commit."""
    with Session(engine) as session, obs.scope(actor=USER, organization=ORG):
        with obs.metered_storage(session, object_id=object_id, bytes=nbytes):
            body()
        session.commit()


# -- 15: suppressed() is for records; metering is accounting -----------------------------------


class TestSuppressedStillMeters:
    def test_quota_holds_inside_suppressed(self, engine: sa.Engine) -> None:
        """An upload inside obs.suppressed() that would pass the quota is refused: QuotaExceeded
        before its body runs, nothing charged (before: it ran and was never counted)."""
        stored: list[str] = []
        upload(engine, "doc_1", 80, lambda: stored.append("doc_1"))

        with obs.suppressed(), pytest.raises(obs.QuotaExceeded) as refused:
            upload(engine, "doc_2", 50, lambda: stored.append("doc_2"))

        assert (refused.value.used, refused.value.limit, refused.value.requested) == (80, 100, 50)
        assert stored == ["doc_1"]
        assert usage(engine) == 80

    def test_charges_and_releases_inside_suppressed_count(self, engine: sa.Engine) -> None:
        """A charge and a release inside obs.suppressed() change the usage like any other;
        only the records (audit_storage's storage.charged/released) are silenced."""
        with capture() as cap, obs.suppressed():
            upload(engine, "doc_1", 60, lambda: None)
            charged = usage(engine)
            with Session(engine) as session:
                with obs.metered_storage(session, object_id="doc_1", release=True):
                    pass
                session.commit()

        assert (charged, usage(engine)) == (60, 0)
        assert cap.as_dicts() == []

    async def test_quota_holds_inside_suppressed_async(
        self, async_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        """The same with an AsyncSession: inside suppressed() the quota check runs."""
        ran: list[str] = []
        with obs.scope(actor=USER, organization=ORG):
            async with async_sessions() as session:
                async with obs.metered_storage(session, object_id="doc_1", bytes=90):
                    ran.append("doc_1")
                await session.commit()
            with obs.suppressed(), pytest.raises(obs.QuotaExceeded):
                async with async_sessions() as session:
                    async with obs.metered_storage(session, object_id="doc_2", bytes=20):
                        ran.append("doc_2")
                    await session.commit()
            async with async_sessions() as session:
                used = await session.run_sync(lambda s: obs.storage_usage(ORG, s))

        assert (ran, used) == (["doc_1"], 90)


# -- 16: a duplicate whose flag nobody read ---------------------------------------------------


def webhook_without_flag(engine: sa.Engine, event: Any) -> None:
    """A handler written as `with obs.once(...):`, without `as first` / `if first:`."""
    with Session(engine) as session, session.begin():
        with obs.once(session, f"stripe:{event.id}"):
            session.execute(payments.insert().values(invoice_id=event.data.object.id))


def webhook_with_flag(engine: sa.Engine, event: Any) -> None:
    """The same handler, guarding its work with the flag."""
    with Session(engine) as session, session.begin():
        with obs.once(session, f"stripe:{event.id}") as first:
            if first:
                session.execute(payments.insert().values(invoice_id=event.data.object.id))


def unread_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "obs_sdk" and r.levelno == logging.WARNING and "never read" in r.getMessage()
    ]


class TestUnreadDuplicate:
    def test_redelivery_without_reading_the_flag_warns(
        self, engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A redelivered event whose handler never read the flag ran its work again: a WARNING
        names the key and duplicate_unread counts it. A handler that reads it stays quiet."""
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            for _ in range(2):
                webhook_with_flag(engine, stripe_event("evt_read"))
            assert unread_warnings(caplog) == []

            for _ in range(2):
                webhook_without_flag(engine, stripe_event("evt_unread", "in_2"))

        (warning,) = unread_warnings(caplog)
        assert "'stripe:evt_unread'" in warning
        assert "if first:" in warning
        assert obs.stats()["duplicate_unread"] == 1
        assert rows(engine, "app_payments") == 3  # the unread duplicate did run its insert

    async def test_async_redelivery_without_reading_the_flag_warns(
        self,
        async_sessions: async_sessionmaker[AsyncSession],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """`async with obs.once(...)` without reading the flag warns on the duplicate too."""
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            for _ in range(3):
                async with async_sessions() as session, session.begin():
                    async with obs.once(session, "stripe:evt_async"):
                        pass

        assert len(unread_warnings(caplog)) == 2
        assert obs.stats()["duplicate_unread"] == 2

    def test_flag_reads_as_a_bool_and_says_what_it_is(self, engine: sa.Engine) -> None:
        """The flag works in `if`/`not` and equals True/False; its repr names key and answer."""
        seen = []
        for _ in range(2):
            with Session(engine) as session, session.begin():
                with obs.once(session, "stripe:evt_repr") as first:
                    seen.append((repr(first), bool(first), first == True, not first))  # noqa: E712

        assert seen == [
            ("<obs.once 'stripe:evt_repr': first>", True, True, False),
            ("<obs.once 'stripe:evt_repr': duplicate>", False, False, True),
        ]


# -- 16: @obs.idempotent ----------------------------------------------------------------------


class TestIdempotentDecorator:
    def test_session_argument(self, engine: sa.Engine) -> None:
        """A handler taking (event, session) runs once per event id; a duplicate returns None
        without running, and another event runs."""

        @obs.idempotent(key="stripe:{event.id}")
        def invoice_paid(event: Any, session: Session) -> str:
            session.execute(payments.insert().values(invoice_id=event.data.object.id))
            return "paid"

        results = []
        for event_id in ("evt_1", "evt_1", "evt_2"):
            with Session(engine) as session, session.begin():
                results.append(invoice_paid(stripe_event(event_id), session))

        assert results == ["paid", None, "paid"]
        assert rows(engine, "app_payments") == 2

    def test_scope_session_and_records(self, engine: sa.Engine) -> None:
        """Without a session argument the scope's session holds the key; the body's records
        join its transaction, and a duplicate records nothing."""

        @obs.idempotent(key="stripe:{event.id}")
        def invoice_paid(event: Any) -> str:
            obs.record_audit("invoice.paid", resource=obs.Resource("invoice", event.data.object.id))
            obs.current_scope().session.execute(
                payments.insert().values(invoice_id=event.data.object.id)
            )
            return "paid"

        results, held = [], []
        with capture() as cap:
            for _ in range(2):
                with Session(engine) as session, obs.scope(actor=USER, session=session):
                    results.append(invoice_paid(stripe_event("evt_scope")))
                    held.append(len(cap.audits))
                    session.commit()

        assert results == ["paid", None]
        assert held == [0, 1]  # the first delivery's record waited for its commit
        assert [(a["action"], a["resource_id"]) for a in cap.audits] == [("invoice.paid", "in_1")]
        assert rows(engine, "app_payments") == 1

    def test_no_session_raises_and_runs_nothing(self, engine: sa.Engine) -> None:
        """With no session argument and no scope session the call fails, saying what to do,
        before the body runs."""
        ran = []

        @obs.idempotent(key="stripe:{event.id}")
        def invoice_paid(event: Any) -> None:
            ran.append(event.id)

        with pytest.raises(obs.ConfigurationError, match=r"obs\.scope\(session=") as error:
            invoice_paid(stripe_event("evt_1"))

        assert "invoice_paid" in str(error.value)
        assert "`session`" in str(error.value)
        assert ran == []

    async def test_async_session_argument(
        self, async_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        """An `async def` handler with an AsyncSession argument runs once per event id."""

        @obs.idempotent(key="stripe:{event.id}")
        async def invoice_paid(event: Any, session: AsyncSession) -> str:
            await session.execute(payments.insert().values(invoice_id=event.data.object.id))
            return "paid"

        results = []
        for event_id in ("evt_1", "evt_1", "evt_2"):
            async with async_sessions() as session, session.begin():
                results.append(await invoice_paid(stripe_event(event_id), session))
        async with async_sessions() as session:
            paid = (
                await session.execute(sa.select(sa.func.count()).select_from(payments))
            ).scalar()

        assert results == ["paid", None, "paid"]
        assert paid == 2

    async def test_async_scope_session(
        self, async_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        """An `async def` handler without a session argument uses the scope's AsyncSession."""
        ran = []

        @obs.idempotent(key="stripe:{event.id}")
        async def invoice_paid(event: Any) -> str:
            ran.append(event.id)
            return "paid"

        results = []
        for _ in range(2):
            async with async_sessions() as session, session.begin():
                with obs.scope(actor=USER, session=session):
                    results.append(await invoice_paid(stripe_event("evt_async")))

        assert (results, ran) == (["paid", None], ["evt_async"])

    def test_rolled_back_first_delivery_runs_again(self, engine: sa.Engine) -> None:
        """The key commits with the caller's transaction: after a rollback the retry runs."""
        runs = []

        @obs.idempotent(key="stripe:{event.id}")
        def invoice_paid(event: Any, session: Session) -> None:
            runs.append(event.id)

        with Session(engine) as session:
            invoice_paid(stripe_event("evt_rb"), session)
            session.rollback()
        with Session(engine) as session, session.begin():
            invoice_paid(stripe_event("evt_rb"), session)

        assert runs == ["evt_rb", "evt_rb"]

    def test_concurrent_deliveries_run_the_body_once(self, engine: sa.Engine) -> None:
        """Five threads deliver one event at once, each with its own session: the body runs
        exactly once. On PostgreSQL it holds its uncommitted key until the four others are
        blocked on it, so the race is real."""
        results: list[str | None] = []
        lock = threading.Lock()

        @obs.idempotent(key="stripe:{event.id}")
        def invoice_paid(event: Any, session: Session) -> str:
            session.execute(payments.insert().values(invoice_id=event.data.object.id))
            if engine.dialect.name == "postgresql":
                wait_until(lambda: key_waiters(engine) >= DELIVERIES - 1)
            return "paid"

        start = threading.Barrier(DELIVERIES)
        errors: list[BaseException] = []

        def deliver() -> None:
            try:
                start.wait()
                with Session(engine) as session, session.begin():
                    result = invoice_paid(stripe_event("evt_race"), session)
                with lock:
                    results.append(result)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=deliver) for _ in range(DELIVERIES)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)

        assert errors == []
        assert sorted(results, key=str) == [None] * (DELIVERIES - 1) + ["paid"]
        assert rows(engine, "app_payments") == 1


def key_waiters(engine: sa.Engine) -> int:
    """Sessions of this database blocked on a lock while writing an idempotency key."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%obs_idempotency_keys%'"
                )
            ).scalar_one()
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll the server's own state (nothing to wait on but it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.01)


class TestIdempotentDecoration:
    def test_keeps_name_signature_and_docstring(self) -> None:
        """The wrapped function keeps its name, signature and docstring."""

        def invoice_paid(event: Any, session: Session, *, notify: bool = True) -> str:
            """Mark the invoice paid."""
            return "paid"

        wrapped = obs.idempotent(key="stripe:{event.id}")(invoice_paid)

        assert wrapped.__name__ == "invoice_paid"
        assert wrapped.__doc__ == "Mark the invoice paid."
        assert inspect.signature(wrapped) == inspect.signature(invoice_paid)

    @pytest.mark.parametrize(
        ("template", "named"),
        [("stripe:{evnt.id}", "{evnt}"), ("stripe:{result.id}", "{result.id}")],
    )
    def test_bad_template_names_function_and_field(self, template: str, named: str) -> None:
        """A field that names no parameter, or the result, fails at decoration."""

        def invoice_paid(event: Any, session: Session) -> None:
            pass

        with pytest.raises(obs.ConfigurationError) as error:
            obs.idempotent(key=template)(invoice_paid)

        assert "invoice_paid" in str(error.value)
        assert named in str(error.value)

    def test_long_key_is_refused_like_once(self, engine: sa.Engine) -> None:
        """A key over 255 characters is the ConfigurationError once() raises; nothing runs."""
        ran = []

        @obs.idempotent(key="export:{name}")
        def export(name: str, session: Session) -> None:
            ran.append(name)

        with Session(engine) as session, pytest.raises(obs.ConfigurationError) as error:
            export("x" * 250, session)
        with Session(engine) as session, pytest.raises(obs.ConfigurationError) as from_once:
            obs.once(session, "export:" + "x" * 250)

        assert str(error.value) == str(from_once.value)
        assert ran == []

    def test_coroutine_function_stays_one(self) -> None:
        """An async handler stays a coroutine function (frameworks check this)."""

        @obs.idempotent(key="stripe:{event.id}")
        async def invoice_paid(event: Any, session: AsyncSession) -> None:
            await asyncio.sleep(0)

        assert inspect.iscoroutinefunction(invoice_paid)
