"""The decisions about a Stripe webhook delivery, without I/O (the sans-I/O core).

Bytes, a header and the clock go in; a decision comes out: either the ``WebhookResult`` to
answer at once (refused, or no handler for the type), or a ``Delivery``: the verified event,
its idempotency key, the handlers to run and the answers to give once the transaction has
told whether it ran first (``processed``), ran before (``duplicate``) or raised
(``failed``). ``WebhookHandler.handle`` and ``ahandle`` (stripe.py) are thin shells that do
the only I/O, the session, the transaction and ``once()``, around this core, sync and async
alike, as h11 and httpx keep the protocol apart from the sockets.

What arrives from the internet is checked before it costs anything: a body over
``max_body_bytes`` is refused before it is decoded, verified or parsed (413); a signature
dated outside the tolerance, in the past *or the future*, is refused (stripe-python checks
only the past); an event id too long for the idempotency key is refused (400) rather than
failing on every one of Stripe's retries.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import stripe
from sqlalchemy import String

from obs_sdk import Actor, metadata, scope
from obs_sdk.exceptions import ConfigurationError

# The public module's name: the logger apps configure for these messages.
logger = logging.getLogger("obs_sdk.integrations.stripe")

ALL_EVENTS = "*"
KEY_PREFIX = "stripe:"
DEFAULT_TOLERANCE = 300  # seconds, as stripe.Webhook.DEFAULT_TOLERANCE
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # Stripe's events are a few KiB; 1 MiB leaves room


def _key_width() -> int:
    """The width of the idempotency key column, read from the public schema (255)."""
    key = metadata().tables["obs_idempotency_keys"].c.key.type
    assert isinstance(key, String) and key.length, "obs_idempotency_keys.key is a String(n)"
    return key.length


MAX_EVENT_ID_LENGTH = _key_width() - len(KEY_PREFIX)  # 248

Handler = Callable[[Any, Any], Any]


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What to answer Stripe: an HTTP ``status`` and a small JSON-able ``body``.

    200 ``{"status": "processed" | "duplicate" | "unhandled", ...}``;
    400 ``{"status": "rejected", "reason": ..., "detail": ...}`` (nothing was recorded);
    413 the same, with reason ``payload_too_large`` (the body was not read further);
    500 ``{"status": "failed", ...}`` (the transaction rolled back; Stripe's retry runs
    it again). Immutable.
    """

    status: int
    body: dict[str, Any] = field(default_factory=dict)


def _rejected(reason: str, detail: str, status: int = 400) -> WebhookResult:
    logger.info("rejected a Stripe webhook delivery: %s (%s)", reason, detail)
    return WebhookResult(status, {"status": "rejected", "reason": reason, "detail": detail})


def check_secrets(secret: object) -> tuple[str, ...]:
    """Return the configured signing secret(s) as a tuple, or raise saying what to pass."""
    secrets = (secret,) if isinstance(secret, str) else secret
    if (
        not isinstance(secrets, Sequence)
        or not secrets
        or not all(isinstance(s, str) and s.strip() for s in secrets)
    ):
        raise ConfigurationError(
            "WebhookHandler(secret=...) takes the endpoint's signing secret "
            "('whsec_...'), or a list of them while rolling it; find it in Stripe's "
            "dashboard under Developers > Webhooks"
        )
    return tuple(secrets)


def check_positive(option: str, value: object, unit: str) -> int:
    """Return *value* if it is a positive int (not a bool), or raise naming *option*."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"WebhookHandler({option}=...) takes a positive number of {unit}, got {value!r}"
        )
    return value


def _signed_at(header: str) -> int | None:
    """Return the ``t=`` of a ``Stripe-Signature`` header that also has a ``v1=``, else None.

    Read as stripe-python reads it (``WebhookSignature._get_timestamp_and_signatures``: the
    first ``t=`` through ``int()``), so the time checked is the time that was signed.
    """
    timestamp = None
    has_v1 = False
    for item in header.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            continue
        if name == "t" and timestamp is None:
            try:
                timestamp = int(value.split("=", 1)[0])
            except ValueError:
                return None
        elif name == "v1":
            has_v1 = True
    return timestamp if has_v1 else None


def _body_size(payload: bytes | bytearray | str) -> int:
    if isinstance(payload, str):
        # Non-ASCII text takes more bytes than characters: measure it as it was sent.
        return len(payload) if payload.isascii() else len(payload.encode("utf-8", "replace"))
    return len(payload)


@dataclass(frozen=True, slots=True)
class Verifier:
    """How deliveries are checked: the secrets, the clock tolerance and the body limit."""

    secrets: tuple[str, ...]
    tolerance: int
    max_body_bytes: int

    def verify(self, payload: bytes | str, signature_header: str | None, now: float) -> Any:
        """Return the verified ``stripe.Event``, or the 400/413 ``WebhookResult``.

        In order, cheapest and least trusting first: the size, the header, the signature
        (``stripe.WebhookSignature.verify_header``, each secret in turn), the signed time
        both ways against *now*, then the event itself. Outcomes are told apart by
        exception class and by this module's own reading of the header, never by an
        exception's message. CPU only.
        """
        if _body_size(payload) > self.max_body_bytes:
            return _rejected(
                "payload_too_large",
                f"the body is over {self.max_body_bytes} bytes, the most this endpoint "
                "accepts (WebhookHandler(max_body_bytes=...))",
                status=413,
            )
        if not signature_header:
            return _rejected(
                "missing_signature_header",
                "no Stripe-Signature header: pass the request's Stripe-Signature "
                "header value and the raw, unparsed request body",
            )
        if isinstance(payload, (bytes, bytearray)):
            try:
                payload = bytes(payload).decode("utf-8")
            except UnicodeDecodeError:
                return _rejected("invalid_json", "the body is not UTF-8 text")
        signed_at = _signed_at(signature_header)
        if signed_at is None:
            return _rejected(
                "invalid_signature_header",
                "the Stripe-Signature header has no t=... and v1=... parts: "
                "pass the header's value unchanged",
            )
        secret = self._matching_secret(payload, signature_header)
        if secret is None:
            return _rejected(
                "invalid_signature",
                f"no signature matches the configured secret(s) ({len(self.secrets)} "
                "tried): check the endpoint's signing secret, and pass the raw request "
                "body unchanged",
            )
        skew = now - signed_at
        if abs(skew) > self.tolerance:
            when = "older than" if skew > 0 else "dated ahead of this server's clock by more than"
            return _rejected(
                "timestamp_outside_tolerance",
                f"the signature is {when} {self.tolerance} s: a replay, or this server's "
                "clock is wrong",
            )
        try:
            # Verified above; tolerance=0 leaves the time to the check above, both ways.
            event = stripe.Webhook.construct_event(payload, signature_header, secret, 0)
        except json.JSONDecodeError as exc:
            return _rejected("invalid_json", f"the signed body is not valid JSON: {exc}")
        except stripe.SignatureVerificationError:  # cannot happen after verify_header
            return _rejected("invalid_signature", "the signature did not verify twice")
        except ValueError as exc:  # e.g. a thin (v2) event notification
            return _rejected("unsupported_event", str(exc))
        except (AttributeError, TypeError):
            return _rejected(
                "missing_id_or_type",
                "the signed body is JSON but not a Stripe event object",
            )
        return _check_event(event)

    def _matching_secret(self, payload: str, signature_header: str) -> str | None:
        """Return the configured secret the header's signature verifies under, if any."""
        for secret in self.secrets:
            try:
                # tolerance=None: no age check here; the caller checks the time both ways.
                stripe.WebhookSignature.verify_header(payload, signature_header, secret, None)
            except stripe.SignatureVerificationError:
                continue
            return secret
        return None


def _check_event(event: Any) -> Any:
    event_id, event_type = getattr(event, "id", None), getattr(event, "type", None)
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type):
        return _rejected("missing_id_or_type", "the signed event has no string id and type")
    if len(event_id) > MAX_EVENT_ID_LENGTH or not event_id.isprintable():
        # "stripe:" + id is the idempotency key: a key that cannot be written would
        # answer 500 on every retry, for days. Stripe's own ids are far shorter.
        return _rejected(
            "invalid_event_id",
            f"the event id has {len(event_id)} characters; at most "
            f"{MAX_EVENT_ID_LENGTH} printable characters fit the idempotency key",
        )
    return event


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery with handlers to run, and the answers for each way it can end."""

    event: Any
    key: str  # the idempotency key ("stripe:" + the event's id), committed with the work
    handlers: tuple[Handler, ...]

    def _scope(self, session: Any) -> AbstractContextManager[Any]:
        """The scope the handlers run in: Stripe as the actor, in the delivery's session."""
        return scope(actor=Actor.system("stripe"), session=session)

    def run(self, session: Any) -> None:
        """Call the handlers in registration order, in the delivery's scope."""
        with self._scope(session):
            for fn in self.handlers:
                fn(self.event, session)

    async def arun(self, session: Any) -> None:
        """``run()`` for ``ahandle()``: an ``async def`` handler is awaited."""
        with self._scope(session):
            for fn in self.handlers:
                outcome = fn(self.event, session)
                if inspect.isawaitable(outcome):
                    await outcome

    def answer(self, first: object) -> WebhookResult:
        """The answer once the transaction committed: *first* is ``once()``'s flag."""
        if not first:
            return WebhookResult(200, {"status": "duplicate", **_summary(self.event)})
        body = {"status": "processed", **_summary(self.event), "handlers": len(self.handlers)}
        return WebhookResult(200, body)

    def failed(self, exc: Exception) -> WebhookResult:
        logger.error(
            "Stripe webhook %s (%s) failed and was rolled back; Stripe will retry it",
            self.event.id,
            self.event.type,
            exc_info=exc,
        )
        # Only the class: Stripe's dashboard shows the body, and a message may hold data.
        body = {"status": "failed", **_summary(self.event), "error": type(exc).__name__}
        return WebhookResult(500, body)


def decide(
    verifier: Verifier,
    registered: tuple[tuple[str, Handler], ...],
    payload: bytes | str,
    signature_header: str | None,
    now: float,
) -> WebhookResult | Delivery:
    """Return the answer for a delivery that needs no transaction, else the ``Delivery``.

    Refused (400/413) and unhandled (200: Stripe stops retrying a type this endpoint does
    not handle) deliveries are answered here; the rest need the database.
    """
    event = verifier.verify(payload, signature_header, now)
    if isinstance(event, WebhookResult):
        return event
    handlers = tuple(fn for t, fn in registered if t in (event.type, ALL_EVENTS))
    if not handlers:
        return WebhookResult(200, {"status": "unhandled", **_summary(event)})
    return Delivery(event, KEY_PREFIX + event.id, handlers)


def _summary(event: Any) -> dict[str, Any]:
    return {"event_id": event.id, "type": event.type}
