"""Stripe webhook routes served on a real socket: Flask on werkzeug, Starlette on uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from sqlalchemy import Column, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool
from starlette.applications import Starlette
from starlette.routing import Route

import obs_sdk as obs
from obs_sdk.integrations.asgi import ScopeMiddleware as AsgiScopeMiddleware
from obs_sdk.integrations.asgi import stripe_webhook_endpoint
from obs_sdk.integrations.stripe import WebhookHandler
from obs_sdk.integrations.wsgi import ScopeMiddleware, stripe_webhook_view
from tests.support.stripe_signing import TEST_SECRET, delivery, tampered
from tests.support.web import serve_asgi, serve_wsgi

PATH = "/stripe/webhook"
app_tables = MetaData()
paid = Table("app_paid_invoices", app_tables, Column("invoice_id", String, primary_key=True))


@obs.audited("invoice.marked_paid", resource=obs.Resource("invoice", "{invoice_id}"))
def insert_paid(session: Any, invoice_id: str) -> None:
    """The app's effect: one row per paid invoice (a second insert would fail)."""
    session.execute(insert(paid).values(invoice_id=invoice_id))


@obs.audited("invoice.marked_paid", resource=obs.Resource("invoice", "{invoice_id}"))
async def ainsert_paid(session: Any, invoice_id: str) -> None:
    """The async twin of insert_paid."""
    await session.execute(insert(paid).values(invoice_id=invoice_id))


def mark_paid(event: Any, session: Any) -> None:
    """Handle invoice.paid on a Session."""
    insert_paid(session, event.data.object["id"])


async def amark_paid(event: Any, session: Any) -> None:
    """Handle invoice.paid on an AsyncSession."""
    await ainsert_paid(session, event.data.object["id"])


def paid_count(url: str) -> int:
    """Count the invoices the app recorded as paid."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(paid)) or 0
    finally:
        engine.dispose()


def flask_app(url: str) -> Any:
    """A Flask app with the webhook view, wrapped in the WSGI ScopeMiddleware."""
    engine = create_engine(url)
    app_tables.create_all(engine)
    obs.configure(database=engine)
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(engine))
    hooks.on("invoice.paid")(mark_paid)
    app = Flask(__name__)
    app.add_url_rule(PATH, view_func=stripe_webhook_view(hooks), methods=["POST"])
    app.wsgi_app = ScopeMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def starlette_app(url: str, *, use_async: bool) -> Any:
    """A Starlette app with the webhook endpoint on a sync or an async sessionmaker."""
    engine = create_engine(url)
    app_tables.create_all(engine)
    obs.configure(database=engine)
    if use_async:
        async_url = url.replace("sqlite://", "sqlite+aiosqlite://")
        # NullPool: no pooled aiosqlite connection outlives uvicorn's event loop.
        maker: Any = async_sessionmaker(create_async_engine(async_url, poolclass=NullPool))
        handler: Callable[..., Any] = amark_paid
    else:
        maker, handler = sessionmaker(engine), mark_paid
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=maker)
    hooks.on("invoice.paid")(handler)
    app = Starlette(routes=[Route(PATH, stripe_webhook_endpoint(hooks), methods=["POST"])])
    return AsgiScopeMiddleware(app)


@pytest.fixture(params=["flask", "starlette-sync", "starlette-async"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Yield (base URL, database URL) of a served app with the webhook route."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    if request.param == "flask":
        with serve_wsgi(flask_app(url)) as base:
            yield base, url
    else:
        app = starlette_app(url, use_async=request.param == "starlette-async")
        with serve_asgi(app) as base:
            yield base, url


class TestWebhookRoutesOverHttp:
    def test_signed_event_gives_200_and_one_effect(self, server):
        """A signed delivery is processed: 200, and the app's table has one row."""
        base, url = server
        d = delivery("evt_1", "invoice.paid", {"id": "in_1", "object": "invoice"})
        response = httpx.post(base + PATH, content=d.body, headers=dict(d.headers))
        assert (response.status_code, response.json()["status"]) == (200, "processed")
        assert paid_count(url) == 1

    def test_redelivery_is_a_duplicate(self, server):
        """Stripe's redelivery of the same event answers 200 duplicate, still one row."""
        base, url = server
        d = delivery("evt_2", "invoice.paid", {"id": "in_2", "object": "invoice"})
        with httpx.Client(base_url=base) as client:
            statuses = [
                client.post(PATH, content=d.body, headers=dict(d.headers)).json()["status"]
                for _ in range(3)
            ]
        assert statuses == ["processed", "duplicate", "duplicate"]
        assert paid_count(url) == 1

    def test_forged_event_gives_400_with_reason(self, server):
        """A tampered body is rejected with 400 and its reason, and nothing is written."""
        base, url = server
        d = delivery("evt_3", "invoice.paid", {"id": "in_3", "object": "invoice"})
        response = httpx.post(base + PATH, content=tampered(d.body), headers=dict(d.headers))
        assert response.status_code == 400
        assert response.json()["reason"] == "invalid_signature"
        assert paid_count(url) == 0

    def test_missing_signature_header_gives_400(self, server):
        """A delivery without Stripe-Signature is rejected as such."""
        base, _ = server
        d = delivery("evt_4", "invoice.paid", {"id": "in_4", "object": "invoice"})
        response = httpx.post(base + PATH, content=d.body)
        assert (response.status_code, response.json()["reason"]) == (
            400,
            "missing_signature_header",
        )

    def test_effect_is_recorded_with_the_request(self, server):
        """The handler's audit record carries the system actor, the peer ip and request id."""
        base, url = server
        d = delivery("evt_5", "invoice.paid", {"id": "in_5", "object": "invoice"})
        headers = {**d.headers, "X-Request-Id": "req-stripe-5"}
        assert httpx.post(base + PATH, content=d.body, headers=headers).status_code == 200
        [record] = obs.audit_log(create_engine(url))
        assert (record.action, record.resource_id, record.actor_type, record.actor_name) == (
            "invoice.marked_paid",
            "in_5",
            "system",
            "stripe",
        )
        assert (record.ip, record.request_id) == ("127.0.0.1", "req-stripe-5")


class TestFactories:
    def test_flask_view_refuses_an_async_handler(self):
        """stripe_webhook_view with an async_sessionmaker is a ConfigurationError."""
        maker = async_sessionmaker(create_async_engine("sqlite+aiosqlite://"))
        hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=maker)
        with pytest.raises(obs.ConfigurationError, match="stripe_webhook_endpoint"):
            stripe_webhook_view(hooks)

    def test_flask_view_names_the_package_when_flask_is_missing(self, monkeypatch):
        """Without Flask the view factory raises MissingDependencyError naming flask."""
        monkeypatch.setitem(sys.modules, "flask", None)
        hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker())
        with pytest.raises(obs.MissingDependencyError) as info:
            stripe_webhook_view(hooks)
        assert (info.value.package, info.value.extra) == ("flask", "flask")

    def test_endpoint_names_the_package_when_starlette_is_missing(self, monkeypatch):
        """Without Starlette the endpoint factory raises MissingDependencyError naming it."""
        monkeypatch.setitem(sys.modules, "starlette.concurrency", None)
        hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker())
        with pytest.raises(obs.MissingDependencyError) as info:
            stripe_webhook_endpoint(hooks)
        assert (info.value.package, info.value.extra) == ("starlette", "starlette")
