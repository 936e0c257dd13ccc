"""FastAPI and Starlette: one call for the request scope, one dependency for the transaction.

::

    from typing import Annotated

    from fastapi import Depends, FastAPI
    from obs_sdk.integrations.fastapi import instrument, session_dependency

    app = FastAPI()
    instrument(app, actor=current_actor, organization=current_organization)
    DB = Annotated[Session, Depends(session_dependency(sessions), scope="function")]

    @app.post("/files")
    def upload(session: DB) -> dict: ...          # def or async def

``instrument`` opens one ``obs.scope(...)`` per request (client IP, user agent, request
id, actor and tenant) and records 401/403 responses as ``access.denied``;
``session_dependency`` opens the request's session, puts it in the scope so that the
route's records join its transaction, commits when the route returns and rolls back when
it raises. Nothing else is needed: no route body calls obs_sdk.

Why the dependency is an ``async def`` generator: FastAPI runs those in the request's own
task, entering and leaving them in one context, so the scope they open reaches the route
(a ``def`` route runs on a worker thread in a copy of that context, which holds the
scope). A ``def`` dependency with ``yield`` runs its enter and its exit on worker threads in
separate copies of the context: a scope opened there never reaches the route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk.exceptions import ConfigurationError, MissingDependencyError

from . import _http
from .asgi import ASGIApp, ScopeMiddleware
from .asgi import Scope as ASGIScope

try:
    import anyio
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
except ImportError:
    raise MissingDependencyError(package="fastapi", extra="fastapi") from None

__all__ = ["ActorResolver", "TenantResolver", "instrument", "session_dependency"]

S = TypeVar("S", bound=Session)
A = TypeVar("A", bound=AsyncSession)

ActorResolver = Callable[[Request], "obs.Actor | Awaitable[obs.Actor | None] | None"]
"""Takes the Starlette ``Request``; returns an ``obs.Actor`` or None, maybe awaitable."""

TenantResolver = Callable[[Request], "str | Awaitable[str | None] | None"]
"""Takes the Starlette ``Request``; returns an organization or workspace id, maybe awaitable."""

# Set on an instrumented app: a second instrument() would stack two scopes per request.
_INSTRUMENTED = "_obs_sdk_instrumented"


def instrument(
    app: Starlette,
    *,
    actor: ActorResolver | None = None,
    organization: TenantResolver | None = None,
    workspace: TenantResolver | None = None,
    trusted_proxies: Iterable[str] | _http.TrustedProxies = (),
    audit_denied: bool = True,
) -> None:
    """Give every request of *app* (FastAPI or Starlette) its own ``obs.scope(...)``.

    The scope carries the client IP (``X-Forwarded-For`` is believed only from
    *trusted_proxies*), the user agent, a request id (the inbound ``X-Request-Id`` when
    valid, else a new one, echoed in the response), the actor and the tenant. It is the
    ``ScopeMiddleware`` of ``obs_sdk.integrations.asgi``, installed outermost (outside
    Starlette's error middleware, so that a 500 page carries the request id too).

    Each resolver takes the request (a Starlette ``Request``; for a WebSocket, the
    ``HTTPConnection`` it is built on) and may be sync or async:
    *actor* returns an ``obs.Actor`` or None (None: anonymous, with the PostHog id of
    the browser when there is one); *organization* and *workspace* return an id or
    None, so that ``metered_storage`` charges the organization rather than the user
    and records are filed under it. They run in that order, before routing, on one
    request whose ``request.state`` the route sees too: an actor resolver may keep
    the user it loaded in ``request.state.user`` for the tenant resolvers and the
    route. They see headers, cookies, the URL and the client, not the body (reading
    it would take it from the route) nor path parameters (not parsed yet). A sync
    resolver runs on the event loop: keep it cheap or make it ``async``. A resolver
    that raises or returns the wrong type is logged and counted in ``obs.stats()``,
    and the request goes on without that field.

    With *audit_denied* (the default), a response that starts with status 401 or 403
    leaves an ``access.denied`` audit record (outcome ``failure``; metadata
    ``method``, ``route``, the template such as ``"/files/{file_id}"``, and ``status``)
    with the scope's actor. It is queued at once, never held for the request's
    transaction, so the rollback that follows a refused request does not take it away.

    Call it once, before the app serves its first request. Safe for any number of
    concurrent requests.

    Raises:
        ConfigurationError: *app* is not a Starlette or FastAPI application, it was
            instrumented already or has started serving, or an option is invalid (a
            resolver that is not callable, a bad proxy entry).
    """
    if not isinstance(app, Starlette):
        raise ConfigurationError(
            f"instrument(app) takes a FastAPI or Starlette application, got {app!r}"
        )
    if getattr(app, _INSTRUMENTED, False):
        raise ConfigurationError(
            "instrument(app) was already called for this app: call it once (a second "
            "scope middleware would resolve every request twice)"
        )
    if app.middleware_stack is not None:
        raise ConfigurationError(
            "instrument(app) must be called before the app serves its first request: "
            "its middleware stack is already built"
        )
    for option, resolver, returns in (
        ("actor", actor, "an obs.Actor or None"),
        ("organization", organization, "a string or None"),
        ("workspace", workspace, "a string or None"),
    ):
        _http.check_resolver(resolver, allow_async=True, option=option, returns=returns)
    proxies = _http.TrustedProxies(trusted_proxies)
    options: dict[str, Any] = {
        "actor": _taking_request(actor),
        "organization": _taking_request(organization),
        "workspace": _taking_request(workspace),
        "trusted_proxies": proxies,
        "audit_denied": audit_denied,
    }
    build_inner = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        # Outermost, as OpenTelemetry's FastAPI instrumentation does: Starlette builds
        # ServerErrorMiddleware -> user middleware -> ExceptionMiddleware -> router, and
        # app.add_middleware() would land inside the first.
        return ScopeMiddleware(build_inner(), **options)

    # An instance attribute shadows the method: Starlette calls it once, lazily.
    setattr(app, "build_middleware_stack", build_middleware_stack)  # noqa: B010
    setattr(app, _INSTRUMENTED, True)


def _taking_request(
    resolver: Callable[[Any], Any] | None,
) -> Callable[[ASGIScope], Any] | None:
    """Adapt a resolver of Starlette requests to one of ASGI connection scopes.

    Every call builds a ``Request`` over the same scope dict, so ``request.state`` (kept
    in ``scope["state"]``) is shared by the resolvers and the route. A WebSocket gets an
    ``HTTPConnection``, the base both share (headers, cookies, URL, client, state): a
    ``Request`` refuses a WebSocket scope.
    """
    if resolver is None:
        return None

    def resolve(scope: ASGIScope) -> Any:
        return resolver(Request(scope) if scope["type"] == "http" else HTTPConnection(scope))

    return resolve


@overload
def session_dependency(
    sessionmaker: async_sessionmaker[A],
) -> Callable[[], AsyncIterator[A]]: ...


@overload
def session_dependency(sessionmaker: orm.sessionmaker[S]) -> Callable[[], AsyncIterator[S]]: ...


def session_dependency(sessionmaker: Any) -> Callable[[], AsyncIterator[Any]]:
    """Return a FastAPI dependency that gives the route a session in a transaction.

    The dependency opens a session from *sessionmaker* (a SQLAlchemy ``sessionmaker``
    or ``async_sessionmaker``) and ``obs.scope(session=session)``, so every record
    the route makes (``def`` or ``async def``, its worker threads and child tasks
    included) joins the session's transaction; then it commits when the route
    returns and rolls back when it raises, an ``HTTPException`` such as a 404 or 403
    included (the route raised: what it wrote is undone, and so are its records).
    Records of a rolled-back request are dropped and counted ``rolled_back``;
    ``access.denied`` and other failure records are queued at once and stay.

    Use it with ``scope="function"`` (FastAPI 0.121 and later), so that the commit
    happens when the route returns, before the response is sent::

        DB = Annotated[Session, Depends(session_dependency(sessions), scope="function")]

    Then a failing commit answers 500, and a client that reads right after a write
    finds it. With FastAPI's default (``"request"``) the commit runs after the response
    has been sent: still all-or-nothing, but the client may be told 200 for a commit
    that then fails.

    It is an ``async def`` generator: FastAPI runs it in the request's own task, so the
    scope it opens reaches the route. With a sync ``sessionmaker``, the route uses the
    session on FastAPI's worker thread (``def`` routes) and the dependency commits,
    rolls back and closes it on another worker thread after the route returned (one
    after the other, never at once), so the event loop never waits on the database.
    With an ``async_sessionmaker`` everything stays on the event loop. The end of the
    transaction is shielded from cancellation: a session is never left open.

    Raises:
        ConfigurationError: *sessionmaker* is not a ``sessionmaker`` or
            ``async_sessionmaker`` (for instance the ``Session`` class itself).
    """
    if isinstance(sessionmaker, async_sessionmaker):
        return _async_session_dependency(sessionmaker)
    if isinstance(sessionmaker, orm.sessionmaker):
        return _sync_session_dependency(sessionmaker)
    raise ConfigurationError(
        f"session_dependency() takes a SQLAlchemy sessionmaker or async_sessionmaker, "
        f"got {sessionmaker!r}; build one with sessionmaker(engine) or "
        "async_sessionmaker(async_engine)"
    )


# Two dependencies, not one body with the ending passed in: they end the transaction in
# different places (a sync session on worker threads, inside the scope; an async one on the
# loop, closed after the scope), and a shared body (tried for issue 19) changed the timing
# under uvicorn: tests/integration/fastapi's test_real_http then failed 4 to 7 runs in 10.
def _sync_session_dependency(factory: orm.sessionmaker[S]) -> Callable[[], AsyncIterator[S]]:
    async def obs_session() -> AsyncIterator[S]:
        session = factory()
        with obs.scope(session=session):
            try:
                yield session
            except BaseException:
                await _in_worker_thread(session, False)
                raise
            await _in_worker_thread(session, True)

    obs_session.__doc__ = f"A session of {factory!r} in a transaction (obs_sdk)."
    return obs_session


def _async_session_dependency(factory: async_sessionmaker[A]) -> Callable[[], AsyncIterator[A]]:
    async def obs_session() -> AsyncIterator[A]:
        session = factory()
        try:
            with obs.scope(session=session):
                try:
                    yield session
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await session.rollback()
                    raise
                with anyio.CancelScope(shield=True):
                    await session.commit()
        finally:
            with anyio.CancelScope(shield=True):
                await session.close()

    obs_session.__doc__ = f"A session of {factory!r} in a transaction (obs_sdk)."
    return obs_session


def _end(session: Session, commit: bool) -> None:
    """Commit or roll back *session*, then close it (on a worker thread)."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def _in_worker_thread(session: Session, commit: bool) -> None:
    """End *session* on anyio's worker threads, shielded: it must end either way."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(_end, session, commit)
