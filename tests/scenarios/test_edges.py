"""Bad input at the edges, and redaction that keeps useful data (issue 15, items 10 and 11).

Each test is the shape that found its item:

- 10: a Stripe delivery signed a year ahead was accepted (stripe-python checks only the
  past); an event id of 300 characters answered 500 on every retry, forever (the
  idempotency key ``"stripe:" + id`` does not fit its 255-character column); a 100 MB body
  was decoded, copied and hashed before anything looked at its size. ``extract()`` without
  a secret applied the workspace and organization any client wrote into its headers.
- 11: metadata of an LLM app lost ``tokens_used`` and ``session_length_s`` (they contain
  "token" and "session") while ``privateKey`` and an ``Authorization`` header in a list of
  header pairs went out as they were.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, jsonify, request
from sqlalchemy.orm import sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.stripe import WebhookHandler
from obs_sdk.testing import capture
from tests.support.stripe_signing import TEST_SECRET, event_payload, sign

pytestmark = pytest.mark.acceptance

YEAR = 365 * 24 * 3600
MIB = 1024 * 1024


@dataclass
class Hooks:
    """A configured obs_sdk on a SQLite file and a WebhookHandler that records what ran."""

    engine: sa.Engine
    hooks: WebhookHandler
    ran: list[str]

    def keys(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM obs_idempotency_keys")).scalar())

    def assert_nothing_recorded(self) -> None:
        assert self.ran == []
        assert self.keys() == 0
        assert obs.flush(timeout=10.0)
        assert obs.stats()["submitted"] == 0


@pytest.fixture
def stripe_app(sqlite_url: str) -> Iterator[Hooks]:
    engine = sa.create_engine(sqlite_url)
    obs.configure(database=engine)
    hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(engine))
    ran: list[str] = []

    @hooks.on("invoice.paid")
    def invoice_paid(event: Any, session: Any) -> None:
        ran.append(event.id)
        obs.record_audit("invoice.paid", resource=obs.Resource("invoice", "in_1"))

    yield Hooks(engine, hooks, ran)
    obs.shutdown(timeout=10.0)
    engine.dispose()


def invoice_paid_body(event_id: str = "evt_1") -> bytes:
    return event_payload(event_id, "invoice.paid", {"id": "in_1", "object": "invoice"})


class TestStripeEdges:
    """Issue 15, item 10: what a webhook endpoint on the internet receives."""

    @pytest.mark.parametrize("offset", [YEAR, -YEAR], ids=["a year ahead", "a year behind"])
    def test_a_signature_dated_far_from_now_is_refused(
        self, stripe_app: Hooks, offset: int
    ) -> None:
        """A correctly signed delivery dated a year from now, either way, answers 400.

        stripe-python refuses only old timestamps; a signature dated ahead would otherwise
        stay replayable until that date.
        """
        body = invoice_paid_body()
        header = sign(body, TEST_SECRET, int(time.time()) + offset)

        result = stripe_app.hooks.handle(body, header)

        assert (result.status, result.body["reason"]) == (400, "timestamp_outside_tolerance")
        stripe_app.assert_nothing_recorded()

    def test_an_event_id_too_long_for_the_key_column_is_refused(self, stripe_app: Hooks) -> None:
        """An id of 300 characters answers 400 with its reason, not a 500 retried for days."""
        body = invoice_paid_body("evt_" + "x" * 296)

        result = stripe_app.hooks.handle(body, sign(body, TEST_SECRET))

        assert (result.status, result.body["status"]) == (400, "rejected")
        assert result.body["reason"] == "invalid_event_id"
        assert "248" in result.body["detail"]
        stripe_app.assert_nothing_recorded()

    @pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
    def test_a_body_over_max_body_bytes_is_refused_before_it_is_parsed(
        self, stripe_app: Hooks, signed: bool
    ) -> None:
        """2 MiB of invalid JSON gets the size answer (413), not a parse or signature error."""
        body = b"{" + b" " * (2 * MIB)
        header = sign(body, TEST_SECRET) if signed else "t=1,v1=00"

        result = stripe_app.hooks.handle(body, header)

        assert (result.status, result.body["reason"]) == (413, "payload_too_large")
        assert str(MIB) in result.body["detail"]
        stripe_app.assert_nothing_recorded()


class TestTenantSpoofing:
    """Issue 15, item 10: propagation headers from a client the service does not control."""

    @pytest.mark.swallows_internal_errors
    def test_a_client_cannot_choose_its_workspace(self) -> None:
        """A public endpoint that extracts propagated ids without a secret keeps its own tenant.

        Any client can send ``obs-workspace``; only a signature (``secret=``) or an explicit
        ``trust_tenant=True`` (a private network) lets it in. The drop is counted and logged.
        """
        app = Flask(__name__)

        @app.post("/files/<file_id>/download")
        def download_endpoint(file_id: str) -> Any:
            user = obs.scope(actor=obs.Actor.user("u_mallory"), workspace="ws_mallory")
            with user, obs.propagation.extract(request.headers):
                download(file_id)
            return jsonify({"ok": True})

        spoofed = {"obs-workspace": "ws_victim", "obs-organization": "org_victim"}
        with capture() as captured:
            response = app.test_client().post("/files/f_1/download", headers=spoofed)

        assert response.status_code == 200
        (record,) = captured.audits
        assert (record["workspace_id"], record["organization_id"]) == ("ws_mallory", None)
        assert obs.stats()["internal_errors"] == 1


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str) -> None:
    """Leave one audit record for *file_id*."""


@dataclass
class Completion:
    text: str
    tokens: int


class TestLlmMetadata:
    """Issue 15, item 11: the metadata an LLM app records about a completion."""

    def test_counts_stay_and_secrets_go(self) -> None:
        """Token counts, session length and the idempotency key are kept; the private key
        and the Authorization header's value are redacted, the Accept header is kept."""

        @obs.audited(
            "completion.created",
            metadata={
                "tokens_used": "{result.tokens}",
                "session_length_s": "{session_length_s}",
                "idempotency_key": "{idempotency_key}",
                "privateKey": "{private_key}",
                "headers": "{headers}",
                "model": "{model}",
            },
        )
        def complete(
            model: str,
            session_length_s: float,
            idempotency_key: str,
            private_key: str,
            headers: list[tuple[str, str]],
        ) -> Completion:
            return Completion("Hello!", tokens=812)

        with capture() as captured, obs.scope(actor=obs.Actor.user("u_1")):
            complete(
                "gpt-4o",
                session_length_s=12.5,
                idempotency_key="req_42",
                private_key="-----BEGIN PRIVATE KEY-----",
                headers=[("Authorization", "Bearer sk"), ("Accept", "*/*")],
            )

        metadata = json.loads(json.dumps(captured.audits[0]["metadata"]))  # as stored
        assert metadata == {
            "tokens_used": 812,
            "session_length_s": 12.5,
            "idempotency_key": "req_42",
            "privateKey": "[REDACTED]",
            "headers": [["Authorization", "[REDACTED]"], ["Accept", "*/*"]],
            "model": "gpt-4o",
        }
