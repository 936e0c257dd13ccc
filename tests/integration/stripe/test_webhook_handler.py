"""WebhookHandler with the real stripe library, real signatures, a SQLite file and the real
PostgreSQL, and the real posthog client sending to a loopback receiver (no mocks)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.stripe import WebhookHandler, WebhookResult
from tests.support.posthog_receiver import PosthogReceiver, make_client
from tests.support.stripe_signing import (
    TEST_SECRET,
    event_payload,
    sign,
    sign_rolled,
    sign_stale,
    tampered,
)

INVOICE = {"id": "in_1", "object": "invoice", "customer": "cus_1", "amount_paid": 4200}
OWNER = obs.Actor.user("u_owner", name="Owner")

app_metadata = sa.MetaData()
payments = sa.Table(
    "app_payments",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("invoice_id", sa.String(64), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
)


@obs.tracked("invoice_paid", properties={"amount": "{amount}"})
@obs.audited("invoice.paid", resource=obs.Resource("invoice", "{invoice_id}"))
def apply_payment(session: Any, invoice_id: str, amount: int) -> None:
    """The app's own effect: one payment row, audited and tracked."""
    session.execute(payments.insert().values(invoice_id=invoice_id, amount=amount))


async def aapply_payment(session: Any, invoice_id: str, amount: int) -> None:
    await session.execute(payments.insert().values(invoice_id=invoice_id, amount=amount))


audited_apply = obs.audited("invoice.paid", resource=obs.Resource("invoice", "{invoice_id}"))(
    obs.tracked("invoice_paid", properties={"amount": "{amount}"})(aapply_payment)
)


def invoice_paid(event: Any, session: Any) -> None:
    """A handler as an app writes it: resolve the actor, then do the work."""
    obs.set_actor(OWNER)
    invoice = event["data"]["object"]
    apply_payment(session, invoice["id"], invoice["amount_paid"])


@dataclass
class App:
    """A configured obs_sdk, the app's engine, a receiver and a WebhookHandler."""

    engine: sa.Engine
    receiver: PosthogReceiver
    hooks: WebhookHandler

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    def effects(self) -> tuple[int, int, int]:
        """(payment rows, audit rows, analytics events at PostHog), after a flush."""
        assert obs.flush(timeout=10.0)
        return (
            self.count("app_payments"),
            self.count("obs_audit_log"),
            len(self.receiver.events_named("invoice_paid")),
        )


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


def start_app(url: str, receiver: PosthogReceiver) -> tuple[sa.Engine, Any]:
    client = make_client(receiver, on_error=obs.posthog_on_error)
    obs.configure(database=url, posthog=client)
    engine = sa.create_engine(url)
    app_metadata.create_all(engine)
    return engine, client


@pytest.fixture
def app(database_url: str, receiver: PosthogReceiver) -> Iterator[App]:
    """The app on a SQLite file and on PostgreSQL, handling invoice.paid."""
    engine, client = start_app(database_url, receiver)
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(engine))
    hooks.on("invoice.paid")(invoice_paid)
    yield App(engine, receiver, hooks)
    obs.shutdown(timeout=10.0)
    client.shutdown()
    engine.dispose()


@pytest.fixture
def sqlite_app(sqlite_url: str, receiver: PosthogReceiver) -> Iterator[App]:
    """The same app on a SQLite file only (for tests whose point is not the database)."""
    engine, client = start_app(sqlite_url, receiver)
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(engine))
    hooks.on("invoice.paid")(invoice_paid)
    yield App(engine, receiver, hooks)
    obs.shutdown(timeout=10.0)
    client.shutdown()
    engine.dispose()


def paid(event_id: str = "evt_1", **fields: Any) -> bytes:
    return event_payload(event_id, "invoice.paid", INVOICE, created=1_790_000_000, **fields)


def deliver(hooks: WebhookHandler, body: bytes, secret: str = TEST_SECRET) -> WebhookResult:
    return hooks.handle(body, sign(body, secret))


class TestValidDelivery:
    def test_processed_once(self, app):
        """A correctly signed delivery answers 200 and has one effect of each kind."""
        result = deliver(app.hooks, paid())

        assert (result.status, result.body) == (
            200,
            {"status": "processed", "event_id": "evt_1", "type": "invoice.paid", "handlers": 1},
        )
        assert app.effects() == (1, 1, 1)

    def test_five_redeliveries_one_effect(self, app):
        """The same event delivered five more times (freshly signed) has one effect."""
        body = paid()
        results = [deliver(app.hooks, body) for _ in range(6)]

        assert [(r.status, r.body["status"]) for r in results] == [(200, "processed")] + [
            (200, "duplicate")
        ] * 5
        assert app.effects() == (1, 1, 1)

    def test_records_carry_the_resolved_actor(self, app):
        """The handler's set_actor() reaches the audit row and the PostHog event."""
        deliver(app.hooks, paid())

        (record,) = obs.audit_log(app.engine, action="invoice.paid")
        assert (record.actor_type, record.actor_id, record.resource_id) == (
            "user",
            "u_owner",
            "in_1",
        )
        assert app.effects() == (1, 1, 1)
        (event,) = app.receiver.events_named("invoice_paid")
        assert (event["distinct_id"], event["properties"]["amount"]) == ("u_owner", 4200)
        assert event["uuid"][14] == "5"  # derived from the key: stable across redeliveries

    def test_system_actor_before_resolution(self, sqlite_app):
        """Before a handler resolves an actor, records carry the system actor stripe."""
        sqlite_app.hooks.on("customer.created")(lambda event, session: obs.record_audit("c.seen"))

        body = event_payload("evt_c", "customer.created", {"id": "cus_1"})
        assert deliver(sqlite_app.hooks, body).status == 200

        (record,) = obs.audit_log(sqlite_app.engine, action="c.seen")
        assert (record.actor_type, record.actor_id, record.actor_name) == ("system", None, "stripe")

    def test_handlers_in_registration_order_and_star(self, sqlite_app):
        """Several handlers of one type and "*" handlers run in registration order."""
        calls = []
        hooks = sqlite_app.hooks
        hooks.on("*")(lambda event, session: calls.append(("*", event.type)))
        hooks.on("invoice.paid")(lambda event, session: calls.append(("second", event.id)))

        result = deliver(hooks, paid())
        deliver(hooks, event_payload("evt_x", "charge.refunded", {"id": "ch_1"}))

        assert result.body["handlers"] == 3
        assert calls == [("*", "invoice.paid"), ("second", "evt_1"), ("*", "charge.refunded")]

    def test_unhandled_type(self, sqlite_app):
        """An event type with no handler answers 200 unhandled and writes no key."""
        result = deliver(sqlite_app.hooks, event_payload("evt_u", "charge.refunded", {"id": "c"}))

        assert (result.status, result.body["status"]) == (200, "unhandled")
        assert sqlite_app.count("obs_idempotency_keys") == 0

    def test_handler_gets_the_verified_event_and_session(self, sqlite_app):
        """A handler receives the stripe.Event and the transaction's session."""
        import stripe

        seen = []
        sqlite_app.hooks.on("invoice.paid")(
            lambda event, session: seen.append((type(event), session.in_transaction()))
        )

        deliver(sqlite_app.hooks, paid())

        assert seen == [(stripe.Event, True)]


class TestSecrets:
    NEW = "whsec_new_secret_after_roll"

    def hooks_with(self, app: App, secret: Any, **kw: Any) -> WebhookHandler:
        hooks = WebhookHandler(secret=secret, sessionmaker=sessionmaker(app.engine), **kw)
        hooks.on("invoice.paid")(invoice_paid)
        return hooks

    @pytest.mark.parametrize("signed_with", [TEST_SECRET, NEW])
    def test_each_secret_of_a_list_verifies(self, sqlite_app, signed_with):
        """While rolling, a delivery signed with either configured secret is accepted."""
        hooks = self.hooks_with(sqlite_app, [self.NEW, TEST_SECRET])

        assert deliver(hooks, paid(), signed_with).status == 200

    def test_rolled_header_with_both_signatures(self, sqlite_app):
        """Stripe's header with one v1= per live secret verifies against the new secret."""
        hooks = self.hooks_with(sqlite_app, self.NEW)
        body = paid()

        assert hooks.handle(body, sign_rolled(body, [TEST_SECRET, self.NEW])).status == 200

    def test_tolerance_is_configurable(self, sqlite_app):
        """tolerance=600 accepts a signature six minutes old that 300 s would refuse."""
        body = paid()
        header = sign_stale(body, TEST_SECRET, age=360)

        assert sqlite_app.hooks.handle(body, header).status == 400
        assert (
            self.hooks_with(sqlite_app, TEST_SECRET, tolerance=600).handle(body, header).status
            == 200
        )


def no_id() -> bytes:
    return json.dumps({"object": "event", "type": "invoice.paid", "data": {}}).encode()


def no_type() -> bytes:
    return json.dumps({"object": "event", "id": "evt_1", "data": {}}).encode()


# (case, body, header maker, expected reason)
REJECTIONS = [
    ("wrong secret", paid(), lambda b: sign(b, "whsec_wrong"), "invalid_signature"),
    ("tampered body", tampered(paid()), lambda b: sign(paid(), TEST_SECRET), "invalid_signature"),
    (
        "stale timestamp",
        paid(),
        lambda b: sign_stale(b, TEST_SECRET),
        "timestamp_outside_tolerance",
    ),
    (
        "future timestamp",
        paid(),
        lambda b: sign(b, TEST_SECRET, int(time.time()) + 360),
        "timestamp_outside_tolerance",
    ),
    ("t= not a number", paid(), lambda b: "t=soon,v1=00", "invalid_signature_header"),
    ("no v1=", paid(), lambda b: f"t={int(time.time())},v0=00", "invalid_signature_header"),
    ("id too long", paid("evt_" + "x" * 245), lambda b: sign(b, TEST_SECRET), "invalid_event_id"),
    ("id with NUL", paid("evt_\u0000"), lambda b: sign(b, TEST_SECRET), "invalid_event_id"),
    ("missing header", paid(), lambda b: None, "missing_signature_header"),
    ("empty header", paid(), lambda b: "", "missing_signature_header"),
    ("garbled header", paid(), lambda b: "sha256=abc", "invalid_signature_header"),
    ("invalid JSON", b'{"id": "evt_1", "type": ', lambda b: sign(b, TEST_SECRET), "invalid_json"),
    ("not UTF-8", b"\xff\xfe{}", lambda b: "t=1,v1=00", "invalid_json"),
    ("no id", no_id(), lambda b: sign(b, TEST_SECRET), "missing_id_or_type"),
    ("no type", no_type(), lambda b: sign(b, TEST_SECRET), "missing_id_or_type"),
    ("JSON list", b"[1, 2]", lambda b: sign(b, TEST_SECRET), "missing_id_or_type"),
]


class TestRejected:
    @pytest.mark.parametrize(
        ("body", "header", "reason"),
        [case[1:] for case in REJECTIONS],
        ids=[case[0] for case in REJECTIONS],
    )
    def test_400_with_reason_and_nothing_recorded(self, app, body, header, reason):
        """A forged, stale or malformed delivery answers 400 with its reason; nothing runs."""
        ran = []
        app.hooks.on("*")(lambda event, session: ran.append(event.id))

        result = app.hooks.handle(body, header(body))

        assert result.status == 400
        assert (result.body["status"], result.body["reason"]) == ("rejected", reason)
        assert result.body["detail"]
        assert ran == []
        assert app.effects() == (0, 0, 0)
        assert app.count("obs_idempotency_keys") == 0
        assert obs.stats()["submitted"] == 0

    def test_reasons_say_what_to_fix(self, sqlite_app):
        """The detail names the header or the secret, so a developer knows what to check."""
        hooks = sqlite_app.hooks
        assert "Stripe-Signature" in hooks.handle(paid(), None).body["detail"]
        assert "secret" in deliver(hooks, paid(), "whsec_wrong").body["detail"]
        assert "300 s" in hooks.handle(paid(), sign_stale(paid(), TEST_SECRET)).body["detail"]
        ahead = sign(paid(), TEST_SECRET, int(time.time()) + 3600)
        assert "ahead" in hooks.handle(paid(), ahead).body["detail"]


class TestEdges:
    """Issue 15, item 10: the limits of what a delivery may be (tests/scenarios/test_edges.py)."""

    def test_tolerance_applies_both_ways(self, sqlite_app):
        """Within the tolerance, ahead or behind, a delivery is accepted (clocks drift)."""
        now = int(time.time())
        for event_id, timestamp in (("evt_a", now + 200), ("evt_b", now - 200)):
            body = paid(event_id)
            result = sqlite_app.hooks.handle(body, sign(body, TEST_SECRET, timestamp))
            assert (result.status, result.body["status"]) == (200, "processed")

    def test_the_longest_id_that_fits_the_key_is_processed(self, app):
        """An id of 248 characters makes a 255-character key: processed, on both databases."""
        event_id = "evt_" + "x" * 244

        result = deliver(app.hooks, paid(event_id))

        assert (result.status, result.body["event_id"]) == (200, event_id)
        assert deliver(app.hooks, paid(event_id)).body["status"] == "duplicate"
        assert app.effects() == (1, 1, 1)

    @pytest.mark.parametrize("limit", [1024, 4096])
    def test_max_body_bytes_is_inclusive(self, sqlite_app, limit):
        """A body of exactly max_body_bytes is handled; one byte more answers 413."""
        hooks = WebhookHandler(
            secret=TEST_SECRET, sessionmaker=sessionmaker(sqlite_app.engine), max_body_bytes=limit
        )
        hooks.on("invoice.paid")(invoice_paid)
        body = paid()
        fitting = body + b" " * (limit - len(body))  # trailing blanks: still the same JSON

        assert deliver(hooks, fitting).status == 200
        over = deliver(hooks, fitting + b" ")
        assert (over.status, over.body["status"], over.body["reason"]) == (
            413,
            "rejected",
            "payload_too_large",
        )
        assert f"over {limit} bytes" in over.body["detail"]

    def test_a_str_body_is_measured_in_utf8_bytes(self, sqlite_app):
        """A str payload counts its UTF-8 bytes: 600 "é" are 1200 bytes, over 1024."""
        hooks = WebhookHandler(
            secret=TEST_SECRET, sessionmaker=sessionmaker(sqlite_app.engine), max_body_bytes=1024
        )
        text = json.dumps({"id": "evt_1", "type": "x", "note": "é" * 600}, ensure_ascii=False)

        assert hooks.handle(text, sign(text, TEST_SECRET)).status == 413

    def test_the_default_limit_is_one_mib(self, sqlite_app):
        """Without max_body_bytes, 1 MiB + 1 byte answers 413, before the signature is read."""
        result = sqlite_app.hooks.handle(b" " * (1024 * 1024 + 1), None)

        assert (result.status, result.body["reason"]) == (413, "payload_too_large")
        assert sqlite_app.count("obs_idempotency_keys") == 0

    async def test_the_starlette_route_answers_413(self, sqlite_app):
        """The Starlette route passes the 413 and its JSON body through."""
        import httpx
        from starlette.applications import Starlette
        from starlette.routing import Route

        from obs_sdk.integrations.asgi import stripe_webhook_endpoint

        endpoint = stripe_webhook_endpoint(sqlite_app.hooks)
        asgi_app = Starlette(routes=[Route("/hook", endpoint, methods=["POST"])])
        body = b"{" + b" " * (2 * 1024 * 1024)
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post(
                "/hook", content=body, headers={"Stripe-Signature": sign(body, TEST_SECRET)}
            )

        assert (response.status_code, response.json()["reason"]) == (413, "payload_too_large")

    def test_the_flask_route_answers_413(self, sqlite_app):
        """The Flask route passes the 413 and its JSON body through."""
        from flask import Flask

        from obs_sdk.integrations.wsgi import stripe_webhook_view

        flask_app = Flask(__name__)
        view = stripe_webhook_view(sqlite_app.hooks)
        flask_app.add_url_rule("/hook", view_func=view, methods=["POST"])
        body = b"{" + b" " * (2 * 1024 * 1024)
        response = flask_app.test_client().post(
            "/hook", data=body, headers={"Stripe-Signature": sign(body, TEST_SECRET)}
        )

        assert (response.status_code, response.get_json()["reason"]) == (413, "payload_too_large")


def failing_first(app: App) -> list[str]:
    """Register a handler that raises on its first call only; return its call log."""
    calls: list[str] = []

    def flaky(event: Any, session: Any) -> None:
        calls.append(event.id)
        if len(calls) == 1:
            raise RuntimeError("ledger service unavailable")

    app.hooks.on("invoice.paid")(flaky)
    return calls


class TestHandlerFails:
    def test_500_nothing_committed_then_retry_once(self, app, caplog):
        """A raising handler answers 500 and commits nothing; the retry runs once, later
        retries are duplicates."""
        failing_first(app)
        body = paid()

        with caplog.at_level(logging.ERROR, logger="obs_sdk.integrations.stripe"):
            failed = deliver(app.hooks, body)

        assert (failed.status, failed.body) == (
            500,
            {
                "status": "failed",
                "event_id": "evt_1",
                "type": "invoice.paid",
                "error": "RuntimeError",
            },
        )
        assert app.effects() == (0, 0, 0)
        assert app.count("obs_idempotency_keys") == 0
        assert any("evt_1" in r.getMessage() and r.exc_info for r in caplog.records)

        retries = [deliver(app.hooks, body).body["status"] for _ in range(3)]

        assert retries == ["processed", "duplicate", "duplicate"]
        assert app.effects() == (1, 1, 1)

    def test_worker_thread_event_of_a_failed_attempt_is_dropped(self, sqlite_app):
        """An event a handler sends from a worker thread joins the attempt's transaction:
        the failed attempt's event is dropped with its rollback (counted), the retry's is
        sent once."""
        import threading

        attempts = []

        def sends_from_a_thread(event: Any, session: Any) -> None:
            send = obs.with_scope(lambda: obs.track("ledger_synced", allow_system=True))
            worker = threading.Thread(target=send)
            worker.start()
            worker.join()
            attempts.append(event.id)
            if len(attempts) == 1:
                raise RuntimeError("failed after the worker sent its event")

        sqlite_app.hooks.on("customer.updated")(sends_from_a_thread)
        body = event_payload("evt_w", "customer.updated", {"id": "cus_1"})

        statuses = [deliver(sqlite_app.hooks, body).status for _ in range(3)]

        assert statuses == [500, 200, 200]
        assert attempts == ["evt_w", "evt_w"]  # both attempts ran; the duplicate did not
        assert obs.flush(timeout=10.0)
        sent = sqlite_app.receiver.events_named("ledger_synced")
        assert len(sent) == 1
        assert obs.stats()["rolled_back"] >= 1


class TestInstrumentationFails:
    @pytest.mark.swallows_internal_errors
    def test_audit_table_gone(self, app):
        """With obs_audit_log dropped, the handler still commits and answers 200."""
        with app.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_audit_log"))

        result = deliver(app.hooks, paid())

        assert (result.status, result.body["status"]) == (200, "processed")
        obs.flush(timeout=10.0)
        assert obs.stats()["failed"] == 1  # the audit record, lost after the commit
        assert app.count("app_payments") == 1
        assert deliver(app.hooks, paid()).body["status"] == "duplicate"
        assert app.count("app_payments") == 1

    @pytest.mark.swallows_internal_errors
    def test_posthog_down(self, app):
        """With PostHog answering 503, the handler commits and answers 200; failures counted."""
        app.receiver.fail_with(503)

        result = deliver(app.hooks, paid())

        assert (result.status, result.body["status"]) == (200, "processed")
        obs.flush(timeout=10.0)
        assert (app.count("app_payments"), app.count("obs_audit_log")) == (1, 1)
        assert app.receiver.events == []
        assert obs.stats()["by_sink"]["posthog"]["upload_failed"] >= 1


class TestKeyWriteFails:
    def test_500_and_handler_not_run(self, sqlite_app):
        """When the idempotency key cannot be written, nothing runs and Stripe retries."""
        ran = []
        sqlite_app.hooks.on("invoice.paid")(lambda event, session: ran.append(1))
        with sqlite_app.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_idempotency_keys"))

        result = deliver(sqlite_app.hooks, paid())

        assert (result.status, result.body["error"]) == (500, "OperationalError")
        assert ran == []
        assert sqlite_app.count("app_payments") == 0


@pytest.fixture
async def async_app(database_url: str, receiver: PosthogReceiver):
    """The app behind an async_sessionmaker (aiosqlite, psycopg async)."""
    engine, client = start_app(database_url, receiver)
    url = engine.url
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    async_engine = create_async_engine(url)
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=async_sessionmaker(async_engine))
    yield App(engine, receiver, hooks)
    await async_engine.dispose()
    obs.shutdown(timeout=10.0)
    client.shutdown()
    engine.dispose()


class TestAsync:
    async def test_async_handler_once(self, async_app):
        """ahandle() awaits an async handler once; redeliveries are duplicates."""

        @async_app.hooks.on("invoice.paid")
        async def handler(event: Any, session: Any) -> None:
            obs.set_actor(OWNER)
            await audited_apply(session, event["data"]["object"]["id"], 4200)

        body = paid()
        results = [await async_app.hooks.ahandle(body, sign(body, TEST_SECRET)) for _ in range(3)]

        assert [r.body["status"] for r in results] == ["processed", "duplicate", "duplicate"]
        assert async_app.effects() == (1, 1, 1)

    async def test_async_failure_then_retry(self, async_app):
        """ahandle(): a raising handler answers 500 and the retry runs once."""
        calls = []

        @async_app.hooks.on("invoice.paid")
        async def handler(event: Any, session: Any) -> None:
            obs.set_actor(OWNER)
            await audited_apply(session, "in_1", 4200)
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")

        body = paid()
        statuses = [
            (await async_app.hooks.ahandle(body, sign(body, TEST_SECRET))).status for _ in range(3)
        ]

        assert statuses == [500, 200, 200]
        assert async_app.effects() == (1, 1, 1)

    async def test_async_rejects_like_sync(self, async_app):
        """ahandle() answers 400 for a wrong signature, recording nothing."""
        result = await async_app.hooks.ahandle(paid(), sign(paid(), "whsec_wrong"))

        assert (result.status, result.body["reason"]) == (400, "invalid_signature")
        assert async_app.effects() == (0, 0, 0)


class TestConfiguration:
    @pytest.mark.parametrize("secret", ["", None, [], ["whsec_ok", ""], 42])
    def test_bad_secret(self, secret):
        """A missing or empty secret is a ConfigurationError naming where to find it."""
        with pytest.raises(obs.ConfigurationError, match="signing secret"):
            WebhookHandler(secret=secret, sessionmaker=sessionmaker())

    @pytest.mark.parametrize("tolerance", [0, -5, "300", True])
    def test_bad_tolerance(self, tolerance):
        """A tolerance that is not a positive int is a ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="tolerance"):
            WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(), tolerance=tolerance)

    @pytest.mark.parametrize("size", [0, -1, True, "1048576", 1.5])
    def test_bad_max_body_bytes(self, size):
        """max_body_bytes that is not a positive int is a ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="max_body_bytes"):
            WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(), max_body_bytes=size)

    def test_bad_event_type(self):
        """hooks.on('') is a ConfigurationError."""
        hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker())
        with pytest.raises(obs.ConfigurationError, match="event type"):
            hooks.on("")

    def test_handle_with_async_sessionmaker(self):
        """handle() on an async_sessionmaker points to ahandle()."""
        hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=async_sessionmaker())
        with pytest.raises(obs.ConfigurationError, match="ahandle"):
            hooks.handle(paid(), sign(paid(), TEST_SECRET))

    async def test_ahandle_with_sync_sessionmaker(self):
        """ahandle() on a sync sessionmaker points to handle()."""
        hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker())
        with pytest.raises(obs.ConfigurationError, match=r"hooks\.handle"):
            await hooks.ahandle(paid(), sign(paid(), TEST_SECRET))

    def test_async_handler_with_handle(self, sqlite_app):
        """An async def handler under handle() is a ConfigurationError, and nothing runs."""

        @sqlite_app.hooks.on("invoice.paid")
        async def handler(event: Any, session: Any) -> None: ...

        with pytest.raises(obs.ConfigurationError, match="ahandle"):
            deliver(sqlite_app.hooks, paid())
        assert sqlite_app.count("app_payments") == 0

    def test_missing_stripe(self, monkeypatch):
        """Without the stripe package the module names the extra to install."""
        monkeypatch.setitem(sys.modules, "stripe", None)
        monkeypatch.delitem(sys.modules, "obs_sdk.integrations.stripe")

        with pytest.raises(obs.MissingDependencyError) as caught:
            importlib.import_module("obs_sdk.integrations.stripe")

        assert "pip install 'obs-sdk[stripe]'" in str(caught.value)
