"""WebhookHandler: verified Stripe webhooks whose effects happen exactly once.

Stripe delivers each event at least once, for up to three days, out of order and
sometimes concurrently. ``WebhookHandler`` verifies the signature with the ``stripe``
library, then runs the handlers registered for the event's type in one transaction,
inside ``obs.once("stripe:" + event.id)``: the dedup key, the handlers' writes and their
audit records commit together, and a redelivery (even a concurrent one) is a duplicate.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from obs_sdk import Actor, metadata, once, scope
from obs_sdk.exceptions import ConfigurationError, MissingDependencyError

try:
    import stripe
except ImportError:
    raise MissingDependencyError(package="stripe", extra="stripe") from None

__all__ = ["WebhookHandler", "WebhookResult"]

logger = logging.getLogger(__name__)

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


def _check_secrets(secret: object) -> tuple[str, ...]:
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


_SESSIONMAKER_FIX = (
    "pass a factory that opens a new session per delivery, bound to your database: "
    "sessionmaker(bind=engine) (from sqlalchemy.orm import sessionmaker), or "
    "async_sessionmaker(engine) for ahandle()"
)


def _check_sessionmaker(factory: object) -> None:
    """Refuse what would fail every delivery (a 500 on each of Stripe's retries)."""
    if isinstance(factory, type) and issubclass(factory, (Session, AsyncSession)):
        raise ConfigurationError(
            f"WebhookHandler(sessionmaker=...) got the {factory.__name__} class, whose "
            f"sessions are bound to no database, so every webhook would fail; {_SESSIONMAKER_FIX}"
        )
    if isinstance(factory, (Session, AsyncSession)):
        raise ConfigurationError(
            f"WebhookHandler(sessionmaker=...) got a Session instance ({type(factory).__name__}),"
            " but each delivery needs a session and transaction of its own; "
            f"{_SESSIONMAKER_FIX}"
        )
    if not callable(factory):
        raise ConfigurationError(
            f"WebhookHandler(sessionmaker=...) got {type(factory).__name__}; {_SESSIONMAKER_FIX}"
        )


class WebhookHandler:
    """Verify Stripe webhook deliveries and run their handlers exactly once.

    ``secret`` is the endpoint's signing secret, or a list of secrets tried in turn
    while one is being rolled. ``sessionmaker`` opens the transaction the handlers run
    in: a ``sessionmaker`` for ``handle()``, an ``async_sessionmaker`` for
    ``ahandle()``; its database must hold the obs_ tables (``obs_idempotency_keys``),
    since the dedup key commits with the handlers' work. ``tolerance`` is how far, in
    seconds, the signature's time may lie from this server's clock, either way.
    ``max_body_bytes`` (1 MiB by default) is the largest body accepted: a larger one is
    answered 413 before it is decoded or verified. The route should also stop reading the
    request at that size, since this handler only sees a body that was read in full.

    Register handlers with ``@hooks.on("invoice.paid")`` (several per type run in
    registration order; ``"*"`` receives every type). Each receives the verified
    ``stripe.Event`` and the session, inside a scope whose actor is
    ``Actor.system("stripe")``; a handler may ``obs.set_actor(...)`` to the actor it
    resolves (e.g. the customer's owner) and should register before deliveries arrive.
    ``handle()`` and ``ahandle()`` are thread- and task-safe.
    """

    def __init__(
        self,
        *,
        secret: str | Sequence[str],
        sessionmaker: Callable[[], Any],
        tolerance: int = DEFAULT_TOLERANCE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._secrets = _check_secrets(secret)
        _check_sessionmaker(sessionmaker)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance <= 0:
            raise ConfigurationError(
                "WebhookHandler(tolerance=...) takes a positive number of seconds, "
                f"got {tolerance!r}"
            )
        if (
            isinstance(max_body_bytes, bool)
            or not isinstance(max_body_bytes, int)
            or max_body_bytes <= 0
        ):
            raise ConfigurationError(
                "WebhookHandler(max_body_bytes=...) takes a positive number of bytes, "
                f"got {max_body_bytes!r}"
            )
        self._sessionmaker = sessionmaker
        self._tolerance = tolerance
        self._max_body_bytes = max_body_bytes
        # Replaced whole on registration: a delivery in flight sees no half update.
        self._handlers: tuple[tuple[str, Handler], ...] = ()

    @property
    def is_async(self) -> bool:
        """True when built with an ``async_sessionmaker``: serve it with ``ahandle()``."""
        return isinstance(self._sessionmaker, async_sessionmaker)

    @property
    def max_body_bytes(self) -> int:
        """The largest body accepted; a route reads at most one byte more before handing over."""
        return self._max_body_bytes

    def on(self, event_type: str) -> Callable[[Handler], Handler]:
        """Register the decorated function for *event_type* (``"*"``: every type).

        The function is returned unchanged; it is called as ``fn(event, session)``.
        An ``async def`` handler needs ``ahandle()``.
        """
        if not isinstance(event_type, str) or not event_type.strip():
            raise ConfigurationError(
                "hooks.on(...) takes a Stripe event type such as 'invoice.paid', or '*'"
            )

        def register(fn: Handler) -> Handler:
            if not callable(fn):
                raise ConfigurationError(f"hooks.on({event_type!r}) decorates a function")
            self._handlers = (*self._handlers, (event_type, fn))
            return fn

        return register

    # -- verification ---------------------------------------------------------------

    def _verify(self, payload: bytes | str, signature_header: str | None) -> Any:
        """Return the verified ``stripe.Event``, or the 400/413 ``WebhookResult``.

        In order, cheapest and least trusting first: the size, the header, the signature
        (``stripe.WebhookSignature.verify_header``, each secret in turn), the signed time
        both ways, then the event itself. Outcomes are told apart by exception class and
        by this module's own reading of the header, never by an exception's message.
        """
        size = _body_size(payload)
        if size > self._max_body_bytes:
            return _rejected(
                "payload_too_large",
                f"the body is over {self._max_body_bytes} bytes, the most this endpoint "
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
                f"no signature matches the configured secret(s) ({len(self._secrets)} "
                "tried): check the endpoint's signing secret, and pass the raw request "
                "body unchanged",
            )
        skew = time.time() - signed_at
        if abs(skew) > self._tolerance:
            when = "older than" if skew > 0 else "dated ahead of this server's clock by more than"
            return _rejected(
                "timestamp_outside_tolerance",
                f"the signature is {when} {self._tolerance} s: a replay, or this server's "
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
        return self._check_event(event)

    def _matching_secret(self, payload: str, signature_header: str) -> str | None:
        """Return the configured secret the header's signature verifies under, if any."""
        for secret in self._secrets:
            try:
                # tolerance=None: no age check here; the caller checks the time both ways.
                stripe.WebhookSignature.verify_header(payload, signature_header, secret, None)
            except stripe.SignatureVerificationError:
                continue
            return secret
        return None

    @staticmethod
    def _check_event(event: Any) -> Any:
        event_id, event_type = getattr(event, "id", None), getattr(event, "type", None)
        if not (
            isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type
        ):
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

    def _handlers_for(self, event_type: str) -> list[Handler]:
        return [fn for t, fn in self._handlers if t in (event_type, ALL_EVENTS)]

    # -- handling -------------------------------------------------------------------

    def handle(self, payload: bytes | str, signature_header: str | None) -> WebhookResult:
        """Verify one delivery and run its handlers in one transaction, exactly once.

        *payload* is the raw request body (the exact bytes Stripe signed) and
        *signature_header* the ``Stripe-Signature`` header value. Returns the result to
        answer Stripe with; never raises for a delivery's content or a handler's error
        (500: rolled back, logged with the event id). Blocks on the database.

        Raises:
            ConfigurationError: the handler was built with an ``async_sessionmaker``,
                or a handler is ``async def`` (use ``ahandle()``).
        """
        if isinstance(self._sessionmaker, async_sessionmaker):
            raise ConfigurationError(
                "WebhookHandler.handle() needs a sync sessionmaker: with an "
                "async_sessionmaker use `await hooks.ahandle(...)`"
            )
        event = self._verify(payload, signature_header)
        if isinstance(event, WebhookResult):
            return event
        handlers = self._handlers_for(event.type)
        if not handlers:
            return _unhandled(event)
        for fn in handlers:
            if inspect.iscoroutinefunction(fn):
                raise ConfigurationError(
                    f"Stripe handler {fn.__qualname__} is async: use `await hooks.ahandle(...)`"
                )
        try:
            with (
                self._sessionmaker() as session,
                session.begin(),
                once(session, KEY_PREFIX + event.id) as first,
            ):
                if not first:
                    return _duplicate(event)
                with scope(actor=Actor.system("stripe"), session=session):
                    for fn in handlers:
                        fn(event, session)
        except Exception as exc:
            return _failed(event, exc)
        return _processed(event, len(handlers))

    async def ahandle(self, payload: bytes | str, signature_header: str | None) -> WebhookResult:
        """Async twin of ``handle()`` for an ``async_sessionmaker``.

        Handlers receive the ``AsyncSession``; ``async def`` handlers are awaited, plain
        ones called. Verification is CPU-only and runs on the event loop.

        Raises:
            ConfigurationError: the handler was built with a sync ``sessionmaker``.
        """
        if not isinstance(self._sessionmaker, async_sessionmaker):
            raise ConfigurationError(
                "WebhookHandler.ahandle() needs an async_sessionmaker: with a sync "
                "sessionmaker use hooks.handle(...)"
            )
        event = self._verify(payload, signature_header)
        if isinstance(event, WebhookResult):
            return event
        handlers = self._handlers_for(event.type)
        if not handlers:
            return _unhandled(event)
        try:
            async with (
                self._sessionmaker() as session,
                session.begin(),
                once(session, KEY_PREFIX + event.id) as first,
            ):
                if not first:
                    return _duplicate(event)
                with scope(actor=Actor.system("stripe"), session=session):
                    for fn in handlers:
                        outcome = fn(event, session)
                        if inspect.isawaitable(outcome):
                            await outcome
        except Exception as exc:
            return _failed(event, exc)
        return _processed(event, len(handlers))


def _summary(event: Any) -> dict[str, Any]:
    return {"event_id": event.id, "type": event.type}


def _processed(event: Any, handlers: int) -> WebhookResult:
    return WebhookResult(200, {"status": "processed", **_summary(event), "handlers": handlers})


def _duplicate(event: Any) -> WebhookResult:
    return WebhookResult(200, {"status": "duplicate", **_summary(event)})


def _unhandled(event: Any) -> WebhookResult:
    # 200: Stripe stops retrying an event type this endpoint does not handle.
    return WebhookResult(200, {"status": "unhandled", **_summary(event)})


def _failed(event: Any, exc: Exception) -> WebhookResult:
    logger.error(
        "Stripe webhook %s (%s) failed and was rolled back; Stripe will retry it",
        event.id,
        event.type,
        exc_info=exc,
    )
    # Only the class: Stripe's dashboard shows the body, and a message may hold data.
    return WebhookResult(500, {"status": "failed", **_summary(event), "error": type(exc).__name__})
