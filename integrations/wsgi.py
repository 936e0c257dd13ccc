"""WSGI middleware: one obs_sdk scope per request, for any WSGI app.

::

    from obs_sdk.integrations.wsgi import ScopeMiddleware

    # Flask: wrap the WSGI callable, not the Flask object.
    app.wsgi_app = ScopeMiddleware(app.wsgi_app, trusted_proxies=["10.0.0.0/8"])

Pure WSGI (PEP 3333, no framework import), so it costs nothing at import time.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import obs_sdk as obs
from obs_sdk._integration_api import count_error

from . import _http

__all__ = ["ActorResolver", "ScopeMiddleware"]

# The WSGI types, spelled out so that no framework is needed even for annotations.
Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

ActorResolver = Callable[[Environ], "obs.Actor | None"]
"""Takes the WSGI environ; returns an ``Actor`` or None. Sync only."""


class ScopeMiddleware:
    """Run each WSGI request inside its own ``obs.scope(...)``.

    The scope carries the client IP (read through *trusted_proxies* only), the
    ``User-Agent``, a request id and the actor. It covers the call to the app
    *and* the consumption of the response iterable, so a streamed body records
    with it until its last chunk; it is closed in the iterable's ``close()``.
    ``obs.set_actor(...)`` inside the app (e.g. after Flask-Login loaded the
    user) applies to the records made later in that request only. The request id
    is the inbound *request_id_header* if it is 1 to 128 visible ASCII characters,
    otherwise a new one; it is added to the response headers through
    ``start_response`` unless the app set that header itself.

    Each request runs in a ``contextvars.Context`` of its own, entered for the
    call and for every step of the iteration: the server thread's context is
    never changed, so a server that iterates on another thread, or forgets to
    call ``close()``, can neither lose the scope nor leak it into the next
    request on that thread.

    *actor* receives the environ and returns an ``obs.Actor`` or None; it must be
    sync. None, or no resolver, records ``obs.Actor.anonymous(distinct_id=...)``
    with the PostHog id from the ``X-POSTHOG-DISTINCT-ID`` header or the
    posthog-js cookie. A resolver that raises or returns something else is logged
    and counted in ``obs.stats()`` and the request proceeds anonymous. No error of
    the middleware's own ever fails a request.

    Thread-safe: one instance serves any number of concurrent requests.

    Args:
        app: the WSGI application to wrap.
        actor: resolves the authenticated actor from the environ.
        trusted_proxies: IPs and CIDR networks of the reverse proxies whose
            ``X-Forwarded-For`` is believed (or a ``TrustedProxies``).
        request_id_header: the header read and echoed as the request id.

    Raises:
        ConfigurationError: an option is invalid (a bad proxy entry, a header name
            that is not a token, a resolver that is not callable or is async).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        actor: ActorResolver | None = None,
        trusted_proxies: Iterable[str] | _http.TrustedProxies = (),
        request_id_header: str = "x-request-id",
    ) -> None:
        _http.check_resolver(actor, allow_async=False)
        self.app = app
        self._actor = actor
        self._trusted = _http.TrustedProxies(trusted_proxies)
        # Echoed as spelled here; matched case-insensitively, as HTTP field names are.
        self._request_id_header = _http.header_name(request_id_header)
        self._request_id_lower = self._request_id_header.lower()
        # CGI naming: "x-request-id" arrives as HTTP_X_REQUEST_ID (PEP 3333).
        self._environ_key = "HTTP_" + self._request_id_header.upper().replace("-", "_")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request inside its own scope; the returned iterable keeps it."""
        context = contextvars.copy_context()
        return context.run(self._start, context, environ, start_response)

    def _start(
        self,
        context: contextvars.Context,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Open the scope and call the app; runs inside the request's *context*."""
        fields, distinct_id, rid = self._read_request(environ)
        actor = self._resolve(environ)
        stack = ExitStack()
        _http.enter_scope(stack, actor, distinct_id, rid, fields, "wsgi.scope")
        try:
            result = self.app(environ, self._echoing(start_response, rid))
        except BaseException:
            stack.close()
            raise
        return _ScopedResponse(result, context, stack)

    def _read_request(self, environ: Environ) -> tuple[dict[str, str | None], str | None, str]:
        """Read ip, user agent, PostHog id and request id from the environ.

        A malformed environ (a server bug) is counted and yields what could be read.
        """
        fields: dict[str, str | None] = {}
        distinct_id = None
        try:
            # Servers join repeated X-Forwarded-For fields with commas (PEP 3333, CGI).
            forwarded = environ.get("HTTP_X_FORWARDED_FOR")
            fields["ip"] = _http.client_ip(
                environ.get("REMOTE_ADDR"),
                [forwarded] if forwarded else [],
                self._trusted,
            )
            fields["user_agent"] = _http.user_agent(environ.get("HTTP_USER_AGENT"))
            distinct_id = _http.posthog_distinct_id(
                environ.get("HTTP_COOKIE"), environ.get("HTTP_X_POSTHOG_DISTINCT_ID")
            )
            inbound_id = environ.get(self._environ_key)
        except Exception as exc:
            count_error("wsgi.request", exc)
            inbound_id = None
        return fields, distinct_id, _http.request_id(inbound_id)

    def _resolve(self, environ: Environ) -> obs.Actor | None:
        """Call the actor resolver; count its failure and fall back to anonymous."""
        if self._actor is None:
            return None
        try:
            result = self._actor(environ)
        except Exception as exc:
            # The resolver is the app's code, but its failure must not fail the
            # request: the request proceeds anonymous (issue #8).
            count_error("wsgi.actor_resolver", exc)
            return None
        if inspect.isawaitable(result):
            # Nothing can await it here; close a coroutine so it warns of nothing.
            close = getattr(result, "close", None)
            if callable(close):
                close()
        return _http.checked_actor(result, "wsgi.actor_resolver")

    def _echoing(self, start_response: StartResponse, rid: str) -> StartResponse:
        """Wrap *start_response* so the response headers carry the request id."""
        header = self._request_id_header
        lower = self._request_id_lower

        def start_response_with_request_id(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: ExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            if not any(name.lower() == lower for name, _ in headers):
                # A new list: the app may keep and reuse its own.
                headers = [*headers, (header, rid)]
            return start_response(status, headers, exc_info)

        return start_response_with_request_id


class _ScopedResponse:
    """The app's response iterable, consumed inside the request's context.

    Every step (``iter``, each ``next``, ``close``) runs in the context the scope
    was opened in; ``close()`` closes the app's iterable and then the scope.
    """

    __slots__ = ("_closed", "_context", "_iterator", "_result", "_stack")

    def __init__(
        self, result: Iterable[bytes], context: contextvars.Context, stack: ExitStack
    ) -> None:
        self._result = result
        self._context = context
        self._stack = stack
        self._iterator: Iterator[bytes] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            # iter() inside the context too: some iterables do work when it is called.
            self._iterator = self._context.run(iter, self._result)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        """Close the app's iterable, then the request's scope (PEP 3333)."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(self._stack.close)


# -- Stripe webhook view (issue #8) ----------------------------------------------------

__all__ += ["stripe_webhook_view"]


def stripe_webhook_view(handler: Any) -> Callable[[], Any]:
    """Return a Flask view that answers Stripe webhook deliveries with *handler*.

    ::

        hooks = WebhookHandler(secret="whsec_...", sessionmaker=Session)
        app.add_url_rule(
            "/stripe/webhook", view_func=stripe_webhook_view(hooks), methods=["POST"]
        )

    *handler* is an ``obs_sdk.integrations.stripe.WebhookHandler`` built with a sync
    ``sessionmaker``. The view reads the raw request body (the exact bytes Stripe
    signed, never parsed as a form) and the ``Stripe-Signature`` header, calls
    ``handler.handle(...)`` and answers with the result's status (200, 400, 413 or 500)
    and its body as JSON. Its endpoint name is ``stripe_webhook``. Thread-safe.

    Raises:
        MissingDependencyError: Flask is not installed.
        ConfigurationError: *handler* was built with an ``async_sessionmaker``
            (serve it from an ASGI app with ``asgi.stripe_webhook_endpoint``).
    """
    try:
        from flask import jsonify, request
    except ImportError:
        raise obs.MissingDependencyError(package="flask", extra="flask") from None
    # Failing here beats a 500 on Stripe's first delivery.
    if handler.is_async:
        raise obs.ConfigurationError(
            "stripe_webhook_view() needs a WebhookHandler with a sync sessionmaker; "
            "for an async_sessionmaker serve obs_sdk.integrations.asgi."
            "stripe_webhook_endpoint(...) from an ASGI app"
        )

    limit = handler.max_body_bytes

    def stripe_webhook() -> Any:
        # The raw stream, never parsed as a form, and at most one byte past the limit: a
        # 100 MB body must not be held to be refused.
        payload = request.stream.read(limit + 1)
        result = handler.handle(payload, request.headers.get("Stripe-Signature"))
        return jsonify(result.body), result.status

    return stripe_webhook
