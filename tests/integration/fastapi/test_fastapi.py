"""obs_sdk.integrations.fastapi: instrument(app) and session_dependency(), in a real app.

The app below is written the way the integration's docs say, with no other glue: the
scope middleware from ``instrument`` (actor and tenant resolvers), the request's
session from ``session_dependency`` (a sync ``sessionmaker`` for ``def`` routes, an
``async_sessionmaker`` for ``async def`` ones, and the sync one under an ``async def``
route too), and service functions decorated with ``@obs.audited``. It runs through
httpx's ASGI transport and, once, under uvicorn on a loopback port, on a SQLite file and
on the real PostgreSQL server. Every test also checks the logs of its whole run (DEBUG):
no "Failed to detach context", no warning from obs_sdk.
"""

# No `from __future__ import annotations`: FastAPI reads a route's annotations when the route
# is declared, and the Annotated aliases of the routes below are local to build_app().

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

import obs_sdk as obs
from obs_sdk.integrations.fastapi import instrument, session_dependency
from tests.support.databases import async_url
from tests.support.web import serve_asgi

QUOTA = 1_000


class Base(DeclarativeBase):
    """The app's own models, in their own registry."""


class Note(Base):
    __tablename__ = "app_fastapi_notes"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    organization: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    body: Mapped[str] = mapped_column(sa.Text)


@dataclass(frozen=True)
class User:
    id: str
    organization: str


USERS = {u.id: u for u in (User("u_ada", "org_acme"), User("u_eve", "org_evil"))}


# --- the service: decorated functions, sync and async --------------------------------------


def new_id() -> str:
    return f"n_{uuid.uuid4().hex[:12]}"


@obs.audited("note.created", resource=obs.Resource("note", "{result.id}"))
def create_note(session: Session, body: str) -> Note:
    note = Note(id=new_id(), organization=obs.current_scope().organization, body=body)
    # Charged to the scope's organization (the tenant resolver's), with the insert.
    with obs.metered_storage(session, object_id=note.id, bytes=len(body)):
        session.add(note)
        session.flush()
    return note


@obs.audited("note.created", resource=obs.Resource("note", "{result.id}"))
async def acreate_note(session: AsyncSession, body: str) -> Note:
    note = Note(id=new_id(), organization=obs.current_scope().organization, body=body)
    async with obs.metered_storage(session, object_id=note.id, bytes=len(body)):
        session.add(note)
        await session.flush()
    return note


@obs.audited("note.read", resource=obs.Resource("note", "{note_id}"))
def read_note(session: Session, note_id: str) -> Note | None:
    return session.get(Note, note_id)


# --- the web layer: resolvers, dependencies, routes ----------------------------------------


def resolve_actor(request: Request) -> obs.Actor | None:
    """A bearer token names a user (a demo, not auth); the user is kept for what follows."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    user = USERS.get(token)
    request.state.user = user
    return obs.Actor.user(user.id) if user else None


async def resolve_organization(request: Request) -> str | None:
    """Async, and reads what the actor resolver kept on request.state."""
    await asyncio.sleep(0)
    return request.state.user.organization if request.state.user else None


def current_user(request: Request) -> User:
    if request.state.user is None:
        raise HTTPException(401, "sign in")
    return request.state.user


def build_app(
    engine: sa.Engine,
    async_engine: AsyncEngine,
    *,
    scope: str = "function",
    audit_denied: bool = True,
) -> FastAPI:
    app = FastAPI()
    instrument(
        app, actor=resolve_actor, organization=resolve_organization, audit_denied=audit_denied
    )
    db = Depends(session_dependency(sessionmaker(engine)), scope=scope)
    adb = Depends(session_dependency(async_sessionmaker(async_engine)), scope=scope)
    SyncDB = Annotated[Session, db]
    AsyncDB = Annotated[AsyncSession, adb]
    CurrentUser = Annotated[User, Depends(current_user)]

    def fail_after_write(fail: str | None) -> None:
        if fail == "http":
            raise HTTPException(409, "conflict")
        if fail == "crash":
            raise RuntimeError("the route broke after writing")

    @app.post("/def/notes", status_code=201)
    def def_create(body: str, session: SyncDB, user: CurrentUser, fail: str | None = None) -> dict:
        note = create_note(session, body)
        fail_after_write(fail)
        return {"id": note.id, "user": user.id}

    @app.post("/async/notes", status_code=201)
    async def async_create(
        body: str, session: AsyncDB, user: CurrentUser, fail: str | None = None
    ) -> dict:
        note = await acreate_note(session, body)
        fail_after_write(fail)
        return {"id": note.id, "user": user.id}

    @app.post("/async-sync/notes", status_code=201)
    async def async_route_sync_session(
        body: str, session: SyncDB, user: CurrentUser, fail: str | None = None
    ) -> dict:
        note = create_note(session, body)
        fail_after_write(fail)
        return {"id": note.id, "user": user.id}

    @app.get("/notes/{note_id}")
    def get_note(note_id: str, session: SyncDB, user: CurrentUser) -> dict:
        note = read_note(session, note_id)  # recorded, then dropped with the rollback
        if note is None:
            raise HTTPException(404)
        if note.organization != user.organization:
            raise HTTPException(403, "not yours")
        return {"id": note.id, "body": note.body}

    @app.get("/whoami")
    async def whoami(request: Request) -> dict:
        current = obs.current_scope()
        return {
            "actor": current.actor.id if current.actor else None,
            "organization": current.organization,
            "state_user": request.state.user.id if request.state.user else None,
            "request_id": current.request_id,
        }

    return app


ROUTES = {
    "def route, sync session": "/def/notes",
    "async def route, async session": "/async/notes",
    "async def route, sync session": "/async-sync/notes",
}
ADA = {"Authorization": "Bearer u_ada"}
EVE = {"Authorization": "Bearer u_eve"}


@pytest.fixture(autouse=True)
def clean_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test's whole log at DEBUG: no context detach errors, no obs_sdk warnings."""
    caplog.set_level(logging.DEBUG)
    yield
    detach = [r for r in caplog.records if "Failed to detach" in r.getMessage()]
    warned = [
        r
        for r in caplog.records
        if r.name.split(".")[0] == "obs_sdk" and r.levelno >= logging.WARNING
    ]
    assert detach == []
    assert [r.getMessage() for r in warned] == []


@pytest.fixture
def engines(database_url: str) -> Iterator[tuple[sa.Engine, AsyncEngine]]:
    """The app's engines on one database, its table, and obs_sdk configured there."""
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    # NullPool: each async session's connection is closed on the loop that used it.
    async_engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    obs.configure(database=engine, storage_quota=QUOTA)
    yield engine, async_engine
    obs.shutdown()
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
async def client(engines: tuple[sa.Engine, AsyncEngine]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app through httpx's ASGI transport (app errors become 500s)."""
    transport = httpx.ASGITransport(app=build_app(*engines), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def trail(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """(action, outcome, actor id, organization, resource id) per record, after a flush."""
    assert obs.flush(timeout=10.0)
    return [
        (r.action, r.outcome, r.actor_id, r.organization_id, r.resource_id)
        for r in obs.audit_log(engine, limit=1000, order="asc")
    ]


def notes(engine: sa.Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(Note.id).order_by(Note.id)))


class TestTransactions:
    @pytest.mark.parametrize("route", list(ROUTES.values()), ids=list(ROUTES))
    async def test_commit_writes_the_records_with_the_rows(
        self, client: httpx.AsyncClient, engines: tuple[sa.Engine, AsyncEngine], route: str
    ) -> None:
        """A route that returns: its rows, its charge and its record commit together, the
        record carrying the resolved user and organization."""
        engine, _ = engines
        response = await client.post(route, params={"body": "hello"}, headers=ADA)
        assert response.status_code == 201
        note_id = response.json()["id"]
        assert notes(engine) == [note_id]
        assert trail(engine) == [("note.created", "success", "u_ada", "org_acme", note_id)]

    @pytest.mark.parametrize("route", list(ROUTES.values()), ids=list(ROUTES))
    @pytest.mark.parametrize(("fail", "status"), [("http", 409), ("crash", 500)])
    async def test_a_route_that_raises_leaves_no_record(
        self,
        client: httpx.AsyncClient,
        engines: tuple[sa.Engine, AsyncEngine],
        route: str,
        fail: str,
        status: int,
    ) -> None:
        """An exception after the write (an HTTPException included) rolls the transaction
        back: no row, no charge, no record (counted rolled_back)."""
        engine, _ = engines
        response = await client.post(route, params={"body": "x", "fail": fail}, headers=ADA)
        assert response.status_code == status
        assert notes(engine) == []
        assert trail(engine) == []
        assert obs.storage_usage("org_acme") == 0
        assert obs.stats()["rolled_back"] == 1

    async def test_the_default_request_scope_commits_and_rolls_back_too(
        self, engines: tuple[sa.Engine, AsyncEngine]
    ) -> None:
        """With FastAPI's default dependency scope the commit runs after the response:
        the outcome is the same once the request is over."""
        app = build_app(*engines, scope="request")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ok = await client.post("/def/notes", params={"body": "a"}, headers=ADA)
            params = {"body": "b", "fail": "http"}
            failed = await client.post("/async/notes", params=params, headers=ADA)
        assert (ok.status_code, failed.status_code) == (201, 409)
        assert trail(engines[0]) == [
            ("note.created", "success", "u_ada", "org_acme", ok.json()["id"])
        ]


class TestTenant:
    @pytest.mark.parametrize("route", list(ROUTES.values()), ids=list(ROUTES))
    async def test_metered_storage_charges_the_organization(
        self, client: httpx.AsyncClient, engines: tuple[sa.Engine, AsyncEngine], route: str
    ) -> None:
        """The organization resolver puts the tenant in the scope: uploads are charged to
        the organization, never to the user's id."""
        for body in ("12345", "678"):
            assert (await client.post(route, params={"body": body}, headers=ADA)).is_success
        assert obs.storage_usage("org_acme") == 8
        assert obs.storage_usage("u_ada") == 0

    async def test_resolvers_share_request_state_with_the_route(
        self, client: httpx.AsyncClient
    ) -> None:
        """What the actor resolver keeps on request.state, the tenant resolver and the
        route read; the scope holds the actor, the organization and the request id."""
        response = await client.get("/whoami", headers={**EVE, "X-Request-Id": "r-1"})
        assert response.json() == {
            "actor": "u_eve",
            "organization": "org_evil",
            "state_user": "u_eve",
            "request_id": "r-1",
        }
        assert response.headers["x-request-id"] == "r-1"

    async def test_a_websocket_gets_its_actor_and_tenant_too(self) -> None:
        """The resolvers receive a WebSocket connection as well (the HTTPConnection a
        Request is built on), and the endpoint runs in its scope."""
        app = FastAPI()
        instrument(app, actor=resolve_actor, organization=resolve_organization)

        @app.websocket("/ws")
        async def ws(websocket: WebSocket) -> None:
            await websocket.accept()
            current = obs.current_scope()
            await websocket.send_json({"actor": current.actor.id, "org": current.organization})
            await websocket.close()

        scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "ws", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
            "root_path": "", "headers": [(b"authorization", b"Bearer u_eve")],
            "client": ("127.0.0.1", 1), "server": ("t", 80), "subprotocols": [],
        }  # fmt: skip
        inbound = [{"type": "websocket.connect"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbound.pop(0) if inbound else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        [text] = [m["text"] for m in sent if m["type"] == "websocket.send"]
        assert text.replace(" ", "") == '{"actor":"u_eve","org":"org_evil"}'
        kinds = [m["type"] for m in sent]
        assert kinds == ["websocket.accept", "websocket.send", "websocket.close"]

    async def test_anonymous_requests_have_no_tenant(self, client: httpx.AsyncClient) -> None:
        """No token: anonymous, no organization."""
        response = await client.get("/whoami")
        assert response.json()["actor"] is None
        assert response.json()["organization"] is None


class TestAccessDenied:
    async def test_403_is_recorded_although_the_transaction_rolled_back(
        self, client: httpx.AsyncClient, engines: tuple[sa.Engine, AsyncEngine]
    ) -> None:
        """A 403 leaves access.denied with the request's actor, method, route template and
        status; the read it made before refusing is rolled back with its record."""
        engine, _ = engines
        note_id = (await client.post("/def/notes", params={"body": "n"}, headers=ADA)).json()["id"]
        response = await client.get(f"/notes/{note_id}", headers=EVE)
        assert response.status_code == 403
        assert obs.flush(timeout=10.0)
        denied = obs.audit_log(engine, action="access.denied")
        assert [(r.outcome, r.actor_type, r.actor_id, r.organization_id) for r in denied] == [
            ("failure", "user", "u_eve", "org_evil")
        ]
        assert denied[0].metadata == {"method": "GET", "route": "/notes/{note_id}", "status": 403}
        assert [row[0] for row in trail(engine)] == ["note.created", "access.denied"]

    async def test_401_is_recorded_for_the_anonymous_caller(
        self, client: httpx.AsyncClient, engines: tuple[sa.Engine, AsyncEngine]
    ) -> None:
        """A 401 from an authentication dependency: access.denied, anonymous, no record of
        the route it never reached."""
        response = await client.post("/async/notes", params={"body": "x"})
        assert response.status_code == 401
        assert trail(engines[0]) == [("access.denied", "failure", None, None, None)]
        [record] = obs.audit_log(engines[0])
        assert (record.actor_type, record.metadata["route"]) == ("anonymous", "/async/notes")

    async def test_other_statuses_and_audit_denied_off_record_nothing(
        self, engines: tuple[sa.Engine, AsyncEngine]
    ) -> None:
        """404 is not a denial; with audit_denied=False a 403 records nothing either."""
        engine, async_engine = engines
        for denied in (True, False):
            app = build_app(engine, async_engine, audit_denied=denied)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/notes/n_missing", headers=ADA)).status_code == 404
                if not denied:
                    anonymous = await client.post("/def/notes", params={"body": "x"})
                    assert anonymous.status_code == 401
        assert trail(engine) == []


class TestUnderUvicorn:
    def test_real_http(self, engines: tuple[sa.Engine, AsyncEngine]) -> None:
        """Served by uvicorn on a loopback port: def and async def routes commit their
        records before the response, a refusal is recorded, the peer and request id too."""
        engine, _ = engines
        with serve_asgi(build_app(*engines)) as base, httpx.Client(base_url=base) as http:
            made = [
                http.post(route, params={"body": "hi"}, headers={**ADA, "X-Request-Id": f"r{i}"})
                for i, route in enumerate(ROUTES.values())
            ]
            # Committed before the response was sent: readable at once.
            assert len(notes(engine)) == 3
            failed = http.post("/def/notes", params={"body": "x", "fail": "crash"}, headers=ADA)
            note = made[0].json()["id"]
            denied = http.get(f"/notes/{note}", headers={**EVE, "X-Request-Id": "rd"})
        assert [r.status_code for r in made] == [201, 201, 201]
        assert (failed.status_code, denied.status_code) == (500, 403)
        assert "x-request-id" in failed.headers  # the 500 page went through the middleware
        assert obs.flush(timeout=10.0)
        got = [
            (r.action, r.actor_id, r.organization_id, r.ip, r.request_id)
            for r in obs.audit_log(engine, order="asc")
        ]
        assert got == [
            ("note.created", "u_ada", "org_acme", "127.0.0.1", "r0"),
            ("note.created", "u_ada", "org_acme", "127.0.0.1", "r1"),
            ("note.created", "u_ada", "org_acme", "127.0.0.1", "r2"),
            ("access.denied", "u_eve", "org_evil", "127.0.0.1", "rd"),
        ]
        assert obs.storage_usage("org_acme") == 6


class TestConfiguration:
    def test_instrument_takes_an_app_once_before_it_serves(self) -> None:
        """Not an app, a second call, or a call after the first request: ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="FastAPI or Starlette"):
            instrument(object())
        app = FastAPI()
        instrument(app)
        with pytest.raises(obs.ConfigurationError, match="already"):
            instrument(app)
        started = FastAPI()
        started.middleware_stack = started.build_middleware_stack()
        with pytest.raises(obs.ConfigurationError, match="first request"):
            instrument(started)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"actor": "u_1"}, "actor='u_1' is not callable"),
            ({"organization": 1}, "organization=1 is not callable"),
            ({"workspace": "ws"}, "workspace='ws' is not callable"),
            ({"trusted_proxies": ["10.0.0.1/8"]}, "trusted_proxies"),
        ],
    )
    def test_bad_options(self, options: dict[str, Any], message: str) -> None:
        """Options are checked when instrumenting, not on the first request."""
        with pytest.raises(obs.ConfigurationError, match=message):
            instrument(FastAPI(), **options)

    @pytest.mark.parametrize("given", [Session, AsyncSession, None, "sqlite://"])
    def test_session_dependency_takes_a_sessionmaker(self, given: Any) -> None:
        """The Session class (a common slip) or anything else: ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="sessionmaker"):
            session_dependency(given)

    @pytest.mark.swallows_internal_errors
    async def test_a_failing_resolver_leaves_the_request_anonymous(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A resolver that raises is counted; the request goes on without that field."""

        def broken(request: Request) -> str:
            raise RuntimeError("tenant store down")

        app = FastAPI()
        instrument(app, actor=resolve_actor, organization=broken)

        @app.get("/")
        async def index() -> dict:
            return {"organization": obs.current_scope().organization}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/", headers=ADA)
        assert response.json() == {"organization": None}
        assert obs.stats()["internal_errors"] == 1
        caplog.clear()  # the warning is the point here, not a stray one
