"""ASGI middleware: one obs_sdk scope per request, for any ASGI app.

::

    from obs_sdk.integrations.asgi import ScopeMiddleware

    app = ScopeMiddleware(app, actor=resolve_actor, trusted_proxies=["10.0.0.0/8"])

It works for Starlette, FastAPI or a bare ASGI callable. It is pure ASGI (no
framework import), so it costs nothing at import time. Wrap the outermost app as
above: ``Starlette(middleware=[Middleware(ScopeMiddleware, ...)])`` works too, but
runs inside Starlette's ``ServerErrorMiddleware``, so the 500 page of an unhandled
error then goes out without the request id header.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextlib import ExitStack
from typing import Any

import obs_sdk as obs
from obs_sdk._integration_api import count_error

from . import _http

__all__ = ["ActorResolver", "ScopeMiddleware", "TenantResolver", "route_template"]

# The ASGI types, spelled out so that no framework is needed even for annotations.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ActorResolver = Callable[[Scope], "obs.Actor | Awaitable[obs.Actor | None] | None"]
"""Takes the ASGI connection scope; returns an ``Actor`` or None, maybe awaitable."""

TenantResolver = Callable[[Scope], "str | Awaitable[str | None] | None"]
"""Takes the ASGI connection scope; returns an organization or workspace id, maybe awaitable."""

DENIED_STATUSES = frozenset({401, 403})
"""Response statuses that leave an ``access.denied`` record when ``audit_denied`` is on."""

DENIED_ACTION = "access.denied"

_FORWARDED_FOR = b"x-forwarded-for"
_USER_AGENT = b"user-agent"
_COOKIE = b"cookie"
_POSTHOG_DISTINCT_ID = b"x-posthog-distinct-id"

# Messages that carry response headers: HTTP start and WebSocket accept (ASGI 2.1+).
_HEADER_MESSAGES = frozenset({"http.response.start", "websocket.accept"})


class ScopeMiddleware:
    """Run each ASGI request inside its own ``obs.scope(...)``.

    For ``http`` and ``websocket`` connections the scope carries the client IP
    (read through *trusted_proxies* only), the ``User-Agent``, a request id and
    the actor; ``lifespan`` and any other type pass through untouched. The scope
    is held for the whole ``await app(...)``, so a streaming response records
    with it until its last chunk is sent, and ``obs.set_actor(...)`` inside the
    app (after authentication) applies to the records made later in that request
    only. The request id is the inbound *request_id_header* if it is 1 to 128
    visible ASCII characters, otherwise a new one; it is echoed in the response
    headers (and on ``websocket.accept``) unless the app set that header itself.

    *actor* receives the ASGI connection scope and returns an ``obs.Actor`` or
    None; it may be sync or async (a sync one runs on the event loop, so keep it
    cheap). None, or no resolver, records ``obs.Actor.anonymous(distinct_id=...)``
    with the PostHog id from the ``X-POSTHOG-DISTINCT-ID`` header or the
    posthog-js cookie. A resolver that raises or returns something else is logged
    and counted in ``obs.stats()`` and the request proceeds anonymous. No error of
    the middleware's own ever fails a request.

    *organization* and *workspace* resolve the tenant the same way (sync or async,
    taking the connection scope, returning a string or None), after the actor, so
    that ``metered_storage`` charges the organization and records are filed under
    it. Like nested scopes they are one unit: whatever they return replaces both.

    With *audit_denied*, an HTTP response that starts with status 401 or 403 leaves an
    ``access.denied`` audit record (outcome ``failure``; metadata: ``method``, the
    ``route`` template that handled the request when the framework names one, and
    ``status``) carrying the scope current when the response starts. A failure record
    is queued at once, never held for a transaction, so it is written even though the
    request's transaction rolled back.

    Thread- and task-safe: one instance serves any number of concurrent requests.

    Args:
        app: the ASGI application to wrap.
        actor: resolves the authenticated actor from the connection scope.
        organization: resolves the organization id from the connection scope.
        workspace: resolves the workspace id from the connection scope.
        trusted_proxies: IPs and CIDR networks of the reverse proxies whose
            ``X-Forwarded-For`` is believed (or a ``TrustedProxies``).
        request_id_header: the header read and echoed as the request id.
        audit_denied: record 401 and 403 responses as ``access.denied``.

    Raises:
        ConfigurationError: an option is invalid (a bad proxy entry, a header name
            that is not a token, a resolver that is not callable).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: ActorResolver | None = None,
        organization: TenantResolver | None = None,
        workspace: TenantResolver | None = None,
        trusted_proxies: Iterable[str] | _http.TrustedProxies = (),
        request_id_header: str = "x-request-id",
        audit_denied: bool = False,
    ) -> None:
        _http.check_resolver(actor, allow_async=True)
        for option, resolver in (("organization", organization), ("workspace", workspace)):
            _http.check_resolver(
                resolver, allow_async=True, option=option, returns="a string or None"
            )
        self.app = app
        self._actor = actor
        self._tenant = tuple(
            (field, resolver)
            for field, resolver in (("organization", organization), ("workspace", workspace))
            if resolver is not None
        )
        self._audit_denied = bool(audit_denied)
        self._trusted = _http.TrustedProxies(trusted_proxies)
        # Compared with lowercased header names as bytes, so nothing is decoded.
        name = _http.header_name(request_id_header).lower()
        self._request_id_header = name.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection inside its own scope (lifespan passes through)."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        fields, distinct_id, rid = self._read_request(scope)
        actor = await self._resolve(scope)
        for field, resolver in self._tenant:
            fields[field] = await self._resolve_tenant(field, resolver, scope)
        with ExitStack() as stack:
            _http.enter_scope(stack, actor, distinct_id, rid, fields, "asgi.scope")
            await self.app(scope, receive, self._sending(send, rid, scope))

    def _read_request(self, scope: Scope) -> tuple[dict[str, str | None], str | None, str]:
        """Read ip, user agent, PostHog id and request id from the connection scope.

        Malformed scopes (a server bug) are counted and yield what could be read.
        """
        fields: dict[str, str | None] = {}
        distinct_id = None
        inbound_id = None
        try:
            forwarded: list[bytes] = []
            cookies: list[bytes] = []
            agent = posthog_header = None
            for raw_name, value in scope.get("headers") or ():
                # ASGI asks servers for lowercase names, but not all comply (the
                # OTel ASGI instrumentation reads them case-insensitively too).
                name = bytes(raw_name).lower()
                if name == _FORWARDED_FOR:
                    forwarded.append(value)
                elif name == _USER_AGENT:
                    agent = agent if agent is not None else value
                elif name == self._request_id_header:
                    inbound_id = inbound_id if inbound_id is not None else value
                elif name == _COOKIE:
                    # HTTP/2 may split Cookie into several fields (RFC 9113 8.2.3).
                    cookies.append(value)
                elif name == _POSTHOG_DISTINCT_ID:
                    posthog_header = posthog_header or value
            client = scope.get("client")
            peer = client[0] if client else None
            fields["ip"] = _http.client_ip(peer, forwarded, self._trusted)
            fields["user_agent"] = _http.user_agent(agent)
            distinct_id = _http.posthog_distinct_id(b"; ".join(cookies), posthog_header)
        except Exception as exc:
            count_error("asgi.request", exc)
        return fields, distinct_id, _http.request_id(inbound_id)

    async def _resolve(self, scope: Scope) -> obs.Actor | None:
        """Call the actor resolver; count its failure and fall back to anonymous."""
        if self._actor is None:
            return None
        result = await _called(self._actor, scope, "asgi.actor_resolver")
        return _http.checked_actor(result, "asgi.actor_resolver")

    @staticmethod
    async def _resolve_tenant(field: str, resolver: TenantResolver, scope: Scope) -> str | None:
        """Call one tenant resolver; count its failure and leave the field unset."""
        site = f"asgi.{field}_resolver"
        return _http.checked_tenant(await _called(resolver, scope, site), site)

    def _sending(self, send: Send, rid: str, scope: Scope) -> Send:
        """Wrap *send*: the response start (or WebSocket accept) carries the request id.

        With *audit_denied*, a 401 or 403 response start leaves an ``access.denied`` record.
        """
        header = self._request_id_header
        value = rid.encode("ascii")
        audit_denied = self._audit_denied

        async def send_with_request_id(message: Message) -> None:
            kind = message.get("type")
            if kind in _HEADER_MESSAGES:
                headers = list(message.get("headers") or ())
                if not any(bytes(name).lower() == header for name, _ in headers):
                    headers.append((header, value))
                    # A copy: the app may reuse its message dict.
                    message = {**message, "headers": headers}
                if audit_denied and kind == "http.response.start":
                    status = message.get("status")
                    if status in DENIED_STATUSES:
                        # Before sending: a client that hung up was denied all the same.
                        _record_denied(scope, status)
            await send(message)

        return send_with_request_id


async def _called(resolver: Callable[[Scope], Any], scope: Scope, site: str) -> Any:
    """Return what the app's resolver gives for *scope* (awaited if need be), else None.

    The resolver is the app's code, but its failure must not fail the request (issue #8):
    it is counted under *site*, and the request goes on without that field.
    """
    try:
        result = resolver(scope)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        count_error(site, exc)
        return None
    return result


def route_template(scope: Scope) -> str | None:
    """Return the path template of the route that handled the request, or None.

    Starlette and FastAPI put the matched route in ``scope["route"]`` while routing:
    ``"/files/{file_id}"`` rather than the path with the id in it, so a record names
    the endpoint without the request's own values. Inside a ``Mount`` the template is
    the mounted app's, relative to the mount. Never raises.
    """
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


def _record_denied(scope: Scope, status: int) -> None:
    """Record one denied request (queued at once: ``outcome="failure"`` is never held)."""
    try:
        obs.record_audit(
            DENIED_ACTION,
            metadata={
                "method": scope.get("method"),
                "route": route_template(scope),
                "status": status,
            },
            outcome="failure",
        )
    except Exception as exc:
        count_error("asgi.access_denied", exc)


# -- Stripe webhook route (issue #8) ---------------------------------------------------

__all__ += ["stripe_webhook_endpoint"]


def stripe_webhook_endpoint(handler: Any) -> Callable[[Any], Awaitable[Any]]:
    """Return a Starlette endpoint that answers Stripe webhook deliveries with *handler*.

    *handler* is an ``obs_sdk.integrations.stripe.WebhookHandler``; the endpoint is
    ``async (starlette.requests.Request) -> starlette.responses.Response`` (the names
    are not imported here, so that this module needs no framework).

    ::

        hooks = WebhookHandler(secret="whsec_...", sessionmaker=Session)
        app = Starlette(routes=[
            Route("/stripe/webhook", stripe_webhook_endpoint(hooks), methods=["POST"]),
        ])
        # FastAPI: app.add_api_route("/stripe/webhook", stripe_webhook_endpoint(hooks),
        #                            methods=["POST"], include_in_schema=False)

    The endpoint reads the raw request body (the exact bytes Stripe signed) and the
    ``Stripe-Signature`` header, and answers with the ``WebhookResult``: its status
    (200, 400, 413 or 500) and its body as JSON. With an ``async_sessionmaker`` it awaits
    ``handler.ahandle(...)`` on the event loop; with a sync ``sessionmaker`` it runs
    ``handler.handle(...)`` in Starlette's thread pool (the scope goes with it), so
    the database never blocks the loop. Task-safe.

    Raises:
        MissingDependencyError: Starlette is not installed.
    """
    try:
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
    except ImportError:
        raise obs.MissingDependencyError(package="starlette", extra="starlette") from None
    is_async = handler.is_async  # which twin to call depends only on the sessionmaker
    limit = handler.max_body_bytes

    async def stripe_webhook(request: Request) -> Response:
        # Read at most one byte past the limit: a 100 MB body must not be held to be refused.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        payload = b"".join(chunks)
        signature = request.headers.get("stripe-signature")
        if is_async:
            result = await handler.ahandle(payload, signature)
        else:
            result = await run_in_threadpool(handler.handle, payload, signature)
        return JSONResponse(result.body, status_code=result.status)

    # Real classes rather than strings: FastAPI resolves annotations in this module's
    # globals, where the lazily imported names do not exist, to inject the Request.
    stripe_webhook.__annotations__ = {"request": Request, "return": Response}
    return stripe_webhook
