"""WebhookHandler: verified Stripe webhooks whose effects happen exactly once.

Stripe delivers each event at least once, for up to three days, out of order and
sometimes concurrently. ``WebhookHandler`` verifies the signature with the ``stripe``
library, then runs the handlers registered for the event's type in one transaction,
inside ``obs.once("stripe:" + event.id)``: the dedup key, the handlers' writes and their
audit records commit together, and a redelivery (even a concurrent one) is a duplicate.

The checks and answers are a core without I/O (``_stripe_core``: bytes, a header and the
clock in, a decision out); ``handle()`` and ``ahandle()`` here are its two thin shells,
which open the session and the transaction, sync and async.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from obs_sdk import once
from obs_sdk.exceptions import ConfigurationError, MissingDependencyError

try:
    import stripe  # noqa: F401  # the core uses it: fail here, naming the extra
except ImportError:
    raise MissingDependencyError(package="stripe", extra="stripe") from None

from ._stripe_core import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_TOLERANCE,
    Delivery,
    Handler,
    Verifier,
    WebhookResult,
    check_positive,
    check_secrets,
    decide,
)

__all__ = ["WebhookHandler", "WebhookResult"]

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


# By the twin that was called (asynchronous or not): what to call instead.
_WRONG_TWIN = {
    False: "WebhookHandler.handle() needs a sync sessionmaker: with an "
    "async_sessionmaker use `await hooks.ahandle(...)`",
    True: "WebhookHandler.ahandle() needs an async_sessionmaker: with a sync "
    "sessionmaker use hooks.handle(...)",
}


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
        secrets = check_secrets(secret)
        _check_sessionmaker(sessionmaker)
        self._verifier = Verifier(
            secrets,
            check_positive("tolerance", tolerance, "seconds"),
            check_positive("max_body_bytes", max_body_bytes, "bytes"),
        )
        self._sessionmaker = sessionmaker
        # Replaced whole on registration: a delivery in flight sees no half update.
        self._handlers: tuple[tuple[str, Handler], ...] = ()

    @property
    def is_async(self) -> bool:
        """True when built with an ``async_sessionmaker``: serve it with ``ahandle()``."""
        return isinstance(self._sessionmaker, async_sessionmaker)

    @property
    def max_body_bytes(self) -> int:
        """The largest body accepted; a route reads at most one byte more before handing over."""
        return self._verifier.max_body_bytes

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
        delivery = self._decide(payload, signature_header, asynchronous=False)
        if isinstance(delivery, WebhookResult):
            return delivery
        for fn in delivery.handlers:
            if inspect.iscoroutinefunction(fn):
                raise ConfigurationError(
                    f"Stripe handler {fn.__qualname__} is async: use `await hooks.ahandle(...)`"
                )
        try:
            with (
                self._sessionmaker() as session,
                session.begin(),
                once(session, delivery.key) as first,
            ):
                if first:
                    delivery.run(session)
        except Exception as exc:
            return delivery.failed(exc)
        return delivery.answer(first)

    async def ahandle(self, payload: bytes | str, signature_header: str | None) -> WebhookResult:
        """Async twin of ``handle()`` for an ``async_sessionmaker``.

        Handlers receive the ``AsyncSession``; ``async def`` handlers are awaited, plain
        ones called. Verification is CPU-only and runs on the event loop.

        Raises:
            ConfigurationError: the handler was built with a sync ``sessionmaker``.
        """
        delivery = self._decide(payload, signature_header, asynchronous=True)
        if isinstance(delivery, WebhookResult):
            return delivery
        try:
            async with (
                self._sessionmaker() as session,
                session.begin(),
                once(session, delivery.key) as first,
            ):
                if first:
                    await delivery.arun(session)
        except Exception as exc:
            return delivery.failed(exc)
        return delivery.answer(first)

    def _decide(
        self, payload: bytes | str, signature_header: str | None, *, asynchronous: bool
    ) -> WebhookResult | Delivery:
        """The core's decision for one delivery, at this server's time (CPU only).

        Raises ``ConfigurationError`` when the twin called does not match the sessionmaker.
        """
        if self.is_async != asynchronous:
            raise ConfigurationError(_WRONG_TWIN[asynchronous])
        return decide(self._verifier, self._handlers, payload, signature_header, time.time())
