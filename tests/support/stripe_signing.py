"""Signed Stripe webhook deliveries, built exactly as Stripe builds them.

Stripe signs ``f"{t}.{body}"`` with HMAC-SHA256 under the endpoint's secret and
sends ``Stripe-Signature: t=<unix seconds>,v1=<hex digest>``; while a secret is
being rolled, one ``v1=`` per live secret. ``stripe.Webhook.construct_event``
decodes a bytes body as UTF-8, recomputes the digest over that exact text, and
only then rejects a timestamp older than its tolerance, 300 s by default
(stripe/_webhook.py, ``verify_header``). So a test must send the very bytes it
signed: re-serialising the JSON breaks the signature, as in production.

Plain builders that do not import ``stripe``, so the library's verification is
tested against an independent implementation. Pure functions: thread-safe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "Stripe-Signature"
TEST_SECRET = "whsec_obs_sdk_test_0123456789abcdef"
API_VERSION = "2024-06-20"
DEFAULT_TOLERANCE = 300  # seconds; stripe.Webhook.DEFAULT_TOLERANCE


def event_payload(
    event_id: str,
    type: str,
    obj: Mapping[str, Any],
    *,
    created: int | None = None,
    api_version: str = API_VERSION,
    livemode: bool = False,
    previous_attributes: Mapping[str, Any] | None = None,
) -> bytes:
    """Return the body of a v1 ``event`` delivery, pretty-printed as Stripe sends it.

    *obj* becomes ``data.object``; *created* defaults to now (unix seconds).
    """
    data: dict[str, Any] = {"object": dict(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    event = {
        "id": event_id,
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
    return json.dumps(event, indent=2).encode()


def signature(payload: bytes | str, secret: str, timestamp: int) -> str:
    """Return the hex HMAC-SHA256 of ``f"{timestamp}.{payload}"`` under *secret*."""
    body = payload.decode() if isinstance(payload, bytes) else payload
    signed = f"{timestamp}.{body}".encode()
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """Return the ``Stripe-Signature`` header value for *payload*: ``t=<ts>,v1=<hex>``.

    *timestamp* defaults to now.
    """
    return sign_rolled(payload, [secret], timestamp)


def sign_rolled(payload: bytes | str, secrets: Sequence[str], timestamp: int | None = None) -> str:
    """Return the header Stripe sends while rolling a secret: one ``v1=`` per secret."""
    t = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={t}", *(f"v1={signature(payload, s, t)}" for s in secrets)])


def sign_stale(payload: bytes | str, secret: str, age: int = DEFAULT_TOLERANCE + 60) -> str:
    """Return a correct signature *age* seconds old, past the default tolerance."""
    return sign(payload, secret, int(time.time()) - age)


def tampered(payload: bytes) -> bytes:
    """Return *payload* with ``livemode`` flipped: valid JSON, signature broken."""
    event = json.loads(payload)
    event["livemode"] = not event["livemode"]
    return json.dumps(event, indent=2).encode()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook request: the raw *body* and the *headers* Stripe sends with it."""

    body: bytes
    headers: Mapping[str, str]


def delivery(
    event_id: str,
    type: str,
    obj: Mapping[str, Any],
    *,
    secret: str = TEST_SECRET,
    timestamp: int | None = None,
    **event_fields: Any,
) -> Delivery:
    """Build a signed delivery ready to post.

    For example ``client.post(url, content=d.body, headers=d.headers)``.
    *event_fields* go to `event_payload` (``created``, ``livemode`` ...).
    """
    body = event_payload(event_id, type, obj, **event_fields)
    return Delivery(
        body=body,
        headers={
            SIGNATURE_HEADER: sign(body, secret, timestamp),
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        },
    )
