"""Exactly-once Stripe webhooks under concurrent redelivery, on SQLite and the real PostgreSQL.

Threads and separate processes deliver one signed event at the same moment; the effects
are counted where they land: the app's own table, the audit table, and the events the real
posthog client uploaded to a loopback receiver. On PostgreSQL the handler that runs waits
until every other delivery is blocked on its uncommitted idempotency key, so the race is
real, not a sequence that happened to be fast.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.stripe import WebhookHandler
from tests.support.posthog_receiver import PosthogReceiver, make_client
from tests.support.stripe_signing import TEST_SECRET, event_payload, sign

pytestmark = pytest.mark.acceptance

DELIVERIES = 6
INVOICE = {"id": "in_7", "object": "invoice", "customer": "cus_7", "amount_paid": 990}
OWNER = obs.Actor.user("u_owner")

app_metadata = sa.MetaData()
payments = sa.Table(
    "app_payments",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("invoice_id", sa.String(64), nullable=False),
)


@obs.tracked("invoice_paid", properties={"invoice": "{invoice_id}"})
@obs.audited("invoice.paid", resource=obs.Resource("invoice", "{invoice_id}"))
def apply_payment(session: Session, invoice_id: str) -> None:
    session.execute(payments.insert().values(invoice_id=invoice_id))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a database condition (nothing to wait on but the server's own state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


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


def build_hooks(engine: sa.Engine) -> WebhookHandler:
    """The app's webhook endpoint: one payment per invoice.paid, audited and tracked."""
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(engine))

    @hooks.on("invoice.paid")
    def invoice_paid(event: Any, session: Session) -> None:
        obs.set_actor(OWNER)
        apply_payment(session, event["data"]["object"]["id"])
        if engine.dialect.name == "postgresql":
            # Hold the key uncommitted until every other delivery is blocked on it.
            wait_until(
                lambda: key_waiters(engine) >= DELIVERIES - 1, "the other deliveries to block"
            )

    return hooks


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def effects(engine: sa.Engine, receiver: PosthogReceiver) -> tuple[int, int, int]:
    """(payment rows, audit rows, analytics events PostHog received)."""
    return (
        count(engine, "app_payments"),
        count(engine, "obs_audit_log"),
        len(receiver.events_named("invoice_paid")),
    )


def signed_delivery(event_id: str) -> tuple[bytes, str]:
    body = event_payload(event_id, "invoice.paid", INVOICE)
    return body, sign(body, TEST_SECRET)


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


def app_engine(url: str) -> sa.Engine:
    # SQLite: writers queue on the database lock; wait as long as obs_sdk's own engine does.
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 30})
    return sa.create_engine(url, pool_size=DELIVERIES + 2)


class TestOnceRollsBackWithTheTransaction:
    def test_first_statement_rolled_back_then_retry_runs(self, database_url):
        """once() as the first statement of a transaction that rolls back leaves no key."""
        obs.configure(database=database_url)
        engine = app_engine(database_url)
        try:
            with Session(engine) as session:
                session.begin()
                with obs.once(session, "stripe:evt_first") as first:
                    assert first
                session.rollback()
            with Session(engine) as session, session.begin():
                with obs.once(session, "stripe:evt_first") as retried:
                    assert retried
            with Session(engine) as session, session.begin():
                with obs.once(session, "stripe:evt_first") as again:
                    assert not again
        finally:
            engine.dispose()


@pytest.mark.postgres
class TestConcurrentHolders:
    @pytest.mark.parametrize(("outcome", "second_runs"), [("commit", False), ("rollback", True)])
    def test_second_holder_waits_for_the_first(self, postgres_engine, outcome, second_runs):
        """A second transaction entering an uncommitted key blocks, then sees the outcome."""
        url = postgres_engine.url.render_as_string(hide_password=False)
        obs.configure(database=url)
        seen: list[bool] = []

        def second() -> None:
            with Session(postgres_engine) as session, session.begin():
                with obs.once(session, "stripe:evt_held") as first:
                    seen.append(first)

        with Session(postgres_engine) as holder:
            holder.begin()
            with obs.once(holder, "stripe:evt_held") as first:
                assert first
            waiter = threading.Thread(target=second)
            waiter.start()
            wait_until(lambda: key_waiters(postgres_engine) == 1, "the second holder to block")
            assert seen == []  # still blocked on the uncommitted key
            getattr(holder, outcome)()
        waiter.join(timeout=30)

        assert seen == [second_runs]


class TestConcurrentDeliveries:
    def test_threads(self, database_url, receiver):
        """Six threads deliver one event at once: one runs, five are duplicates."""
        obs.configure(database=database_url, posthog=(client := make_client(receiver)))
        engine = app_engine(database_url)
        app_metadata.create_all(engine)
        hooks = build_hooks(engine)
        body, header = signed_delivery("evt_threads")
        start = threading.Barrier(DELIVERIES)
        statuses: list[tuple[int, str]] = []

        def deliver() -> None:
            start.wait()
            result = hooks.handle(body, header)
            statuses.append((result.status, result.body["status"]))

        try:
            workers = [threading.Thread(target=deliver) for _ in range(DELIVERIES)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=60)
            assert obs.flush(timeout=10.0)

            assert sorted(statuses) == [(200, "duplicate")] * 5 + [(200, "processed")]
            assert effects(engine, receiver) == (1, 1, 1)
        finally:
            obs.shutdown(timeout=10.0)
            client.shutdown()
            engine.dispose()

    @pytest.mark.postgres
    def test_processes(self, postgres_engine, receiver):
        """Six processes deliver one event at once: one runs, five are duplicates."""
        url = postgres_engine.url.render_as_string(hide_password=False)
        obs.create_tables(postgres_engine)
        app_metadata.create_all(postgres_engine)
        body, header = signed_delivery("evt_processes")
        # forkserver: children fork from one clean, single-threaded server that imported
        # this module once (spawn would pay ~1.5 s of imports per child; plain fork would
        # copy this process's threads).
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "psycopg"])
        start = ctx.Barrier(DELIVERIES)
        results = ctx.Queue()
        children = [
            ctx.Process(
                target=deliver_in_process, args=(url, receiver.url, body, header, start, results)
            )
            for _ in range(DELIVERIES)
        ]
        for child in children:
            child.start()
        try:
            statuses = sorted(results.get(timeout=120) for _ in children)
        finally:
            for child in children:
                child.join(timeout=30)
                if child.exitcode is None:
                    child.kill()

        assert [c.exitcode for c in children] == [0] * DELIVERIES
        assert statuses == [(200, "duplicate")] * 5 + [(200, "processed")]
        assert effects(postgres_engine, receiver) == (1, 1, 1)


class _At:
    """Where the parent's receiver listens (make_client reads only ``.url``)."""

    def __init__(self, url: str) -> None:
        self.url = url


def deliver_in_process(
    url: str, posthog_url: str, body: bytes, header: str, start: Any, results: Any
) -> None:
    """One webhook-receiving process: configure, connect, wait for the others, handle."""
    client = make_client(_At(posthog_url))  # type: ignore[arg-type]
    obs.configure(database=url, posthog=client, create_tables=False)
    engine = sa.create_engine(url)
    hooks = build_hooks(engine)
    with engine.connect():  # connected before the race, as a warm server would be
        pass
    start.wait(timeout=60)
    result = hooks.handle(body, header)
    obs.shutdown(timeout=10.0)  # the event reaches the receiver before the process ends
    client.shutdown()
    engine.dispose()
    results.put((result.status, result.body["status"]))
