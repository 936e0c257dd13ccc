"""The ASGI ScopeMiddleware: hand-built connection scopes, Starlette and httpx."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Scope
from starlette.websockets import WebSocket

import obs_sdk as obs
from obs_sdk.integrations.asgi import ScopeMiddleware
from obs_sdk.testing import capture
from tests.support.web import POSTHOG_COOKIE, TRUSTED, mark, rows, scope_fields

with warnings.catch_warnings():
    # Starlette 1.x warns at import that TestClient should move to httpx2; the
    # client works the same, and the warning would fail collection here.
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*deprecated")
    from starlette.testclient import TestClient

CLIENT = ("203.0.113.5", 50000)
PROXY = ("10.0.0.2", 50000)


def header_actor(scope: Scope) -> obs.Actor | None:
    """Resolve the user from an ``x-user`` header; ``x-user: fail`` raises."""
    user = dict(scope.get("headers") or ()).get(b"x-user")
    if user == b"fail":
        raise RuntimeError("session store is down")
    return obs.Actor.user(user.decode()) if user else None


async def async_header_actor(scope: Scope) -> obs.Actor | None:
    """The async twin of header_actor."""
    await asyncio.sleep(0)
    return header_actor(scope)


def http_scope(
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = CLIENT,
    kind: str = "http",
) -> Scope:
    """Build an ASGI connection scope by hand."""
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http" if kind == "http" else "ws",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": client,
        "server": ("testserver", 80),
    }


async def run_asgi(app: Any, scope: Scope) -> list[Message]:
    """Drive *app* with *scope* and return the messages it sent."""
    sent: list[Message] = []
    inbound = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        return inbound.pop(0) if inbound else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app that records one step and answers 200."""
    mark("handled")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def response_headers(messages: list[Message]) -> dict[bytes, bytes]:
    """Return the headers of the response start message."""
    start = next(m for m in messages if m["type"] == "http.response.start")
    return dict(start["headers"])


async def index(request: Request) -> JSONResponse:
    mark("index")
    return JSONResponse(scope_fields())


async def login(request: Request) -> JSONResponse:
    mark("before-login")
    obs.set_actor(obs.Actor.user(request.headers["x-login"]))
    mark("after-login")
    return JSONResponse(scope_fields())


def sync_login(request: Request) -> PlainTextResponse:
    # A sync endpoint runs in Starlette's thread pool, in a copy of the context.
    mark("before-login")
    obs.set_actor(obs.Actor.user(request.headers["x-login"]))
    mark("after-login")
    return PlainTextResponse("ok")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            mark(f"chunk-{i}")
            yield f"{obs.current_scope().request_id}\n".encode()

    return StreamingResponse(chunks())


async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    mark("ws")
    await websocket.send_json(scope_fields())
    await websocket.close()


def starlette_app(**options: Any) -> Starlette:
    """A Starlette app with the middleware installed the Starlette way."""
    return Starlette(
        routes=[
            Route("/", index),
            Route("/login", login),
            Route("/sync-login", sync_login),
            Route("/stream", stream),
            WebSocketRoute("/ws", websocket_endpoint),
        ],
        middleware=[Middleware(ScopeMiddleware, **options)],
    )


class TestConstruction:
    """Options are checked when the middleware is built."""

    def test_a_bad_trusted_proxy_names_the_entry(self) -> None:
        """A typo in trusted_proxies fails at startup, naming the entry."""
        with pytest.raises(obs.ConfigurationError, match=re.escape("'10.0.0.300'")):
            ScopeMiddleware(plain_app, trusted_proxies=["10.0.0.0/8", "10.0.0.300"])

    @pytest.mark.parametrize("name", ["", "x request id", "x-id\r\n", b"x-id", None])
    def test_a_bad_header_name_is_rejected(self, name: Any) -> None:
        """request_id_header must be an HTTP field name."""
        with pytest.raises(obs.ConfigurationError, match="request_id_header"):
            ScopeMiddleware(plain_app, request_id_header=name)

    def test_a_resolver_must_be_callable(self) -> None:
        """actor= takes a function, not an Actor."""
        with pytest.raises(obs.ConfigurationError, match="not callable"):
            ScopeMiddleware(plain_app, actor=obs.Actor.user("u_1"))  # type: ignore[arg-type]


class TestHandBuiltScopes:
    """The middleware driven with ASGI connection scopes built by hand."""

    async def test_records_carry_the_request_fields(self) -> None:
        """ip, user agent, request id and actor come from the connection scope."""
        app = ScopeMiddleware(plain_app, actor=header_actor)
        headers = [
            (b"user-agent", b"curl/8.5"),
            (b"x-request-id", b"req_9"),
            (b"x-user", b"u_1"),
        ]
        with capture() as captured:
            await run_asgi(app, http_scope(headers))
        assert rows(captured) == [
            {
                "step": "handled",
                "actor_type": "user",
                "actor_id": "u_1",
                "ip": "203.0.113.5",
                "user_agent": "curl/8.5",
                "request_id": "req_9",
            }
        ]

    async def test_header_names_are_matched_case_insensitively(self) -> None:
        """A server that does not lowercase header names is still read right."""
        app = ScopeMiddleware(plain_app)
        headers = [(b"User-Agent", b"curl/8.5"), (b"X-Request-ID", b"req_9")]
        with capture() as captured:
            await run_asgi(app, http_scope(headers))
        assert [(r["user_agent"], r["request_id"]) for r in rows(captured)] == [
            ("curl/8.5", "req_9")
        ]

    async def test_the_request_id_is_echoed(self) -> None:
        """The response start carries the request id the records carry."""
        app = ScopeMiddleware(plain_app)
        headers = [(b"x-request-id", b"req_9")]
        messages = await run_asgi(app, http_scope(headers))
        assert response_headers(messages)[b"x-request-id"] == b"req_9"

    @pytest.mark.parametrize("inbound", [b"x" * 129, b"two words", b"caf\xc3\xa9", b"", b"a\x7fb"])
    async def test_a_bad_request_id_is_replaced_and_echoed(self, inbound: bytes) -> None:
        """An unusable inbound id is replaced; the new one is echoed and recorded."""
        app = ScopeMiddleware(plain_app)
        with capture() as captured:
            messages = await run_asgi(app, http_scope([(b"x-request-id", inbound)]))
        echoed = response_headers(messages)[b"x-request-id"].decode()
        assert echoed != inbound.decode("latin-1")
        assert len(echoed) == 32
        assert [r["request_id"] for r in rows(captured)] == [echoed]

    async def test_a_custom_request_id_header(self) -> None:
        """request_id_header names the header read and echoed."""
        app = ScopeMiddleware(plain_app, request_id_header="X-Correlation-ID")
        headers = [(b"x-correlation-id", b"corr-1"), (b"x-request-id", b"other")]
        with capture() as captured:
            messages = await run_asgi(app, http_scope(headers))
        assert response_headers(messages)[b"x-correlation-id"] == b"corr-1"
        assert b"x-request-id" not in response_headers(messages)
        assert [r["request_id"] for r in rows(captured)] == ["corr-1"]

    async def test_the_apps_own_request_id_header_is_kept(self) -> None:
        """A header the app set itself is neither replaced nor duplicated."""

        async def app_with_header(scope: Any, receive: Any, send: Any) -> None:
            headers = [(b"X-Request-ID", b"app-chosen")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

        messages = await run_asgi(ScopeMiddleware(app_with_header), http_scope())
        start = messages[0]
        assert start["headers"] == [(b"X-Request-ID", b"app-chosen")]

    async def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(self) -> None:
        """Only a trusted peer may name the client."""
        app = ScopeMiddleware(plain_app, trusted_proxies=TRUSTED)
        headers = [(b"x-forwarded-for", b"1.1.1.1")]
        with capture() as captured:
            await run_asgi(app, http_scope(headers, client=CLIENT))
        assert [r["ip"] for r in rows(captured)] == ["203.0.113.5"]

    async def test_a_trusted_proxy_chain_yields_the_client(self) -> None:
        """Behind trusted proxies, the right-most untrusted entry is the client."""
        app = ScopeMiddleware(plain_app, trusted_proxies=TRUSTED)
        headers = [
            (b"x-forwarded-for", b"6.6.6.6, 198.51.100.7"),
            (b"x-forwarded-for", b"10.0.0.9"),
        ]
        with capture() as captured:
            await run_asgi(app, http_scope(headers, client=PROXY))
        assert [r["ip"] for r in rows(captured)] == ["198.51.100.7"]

    async def test_no_client_means_no_ip(self) -> None:
        """A server that knows no peer (a Unix socket) records ip NULL."""
        with capture() as captured:
            await run_asgi(ScopeMiddleware(plain_app), http_scope(client=None))
        assert [r["ip"] for r in rows(captured)] == [None]

    async def test_the_async_resolver_receives_the_connection_scope(self) -> None:
        """An async resolver is awaited with the ASGI scope dict."""
        seen: list[Scope] = []

        async def resolver(scope: Scope) -> obs.Actor:
            seen.append(scope)
            return obs.Actor.service("key_1")

        scope = http_scope()
        with capture() as captured:
            await run_asgi(ScopeMiddleware(plain_app, actor=resolver), scope)
        assert seen == [scope]
        assert [(r["actor_type"], r["actor_id"]) for r in rows(captured)] == [("service", "key_1")]

    async def test_no_actor_is_anonymous_with_the_posthog_id(self) -> None:
        """Without an actor, the PostHog cookie fills the anonymous distinct id."""
        seen: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope_fields())
            await plain_app(scope, receive, send)

        middleware = ScopeMiddleware(app, actor=header_actor)
        await run_asgi(middleware, http_scope([(b"cookie", POSTHOG_COOKIE.encode())]))
        await run_asgi(middleware, http_scope([(b"x-posthog-distinct-id", b"anon-2")]))
        await run_asgi(middleware, http_scope())
        assert [(s["actor_type"], s["actor_id"], s["distinct_id"]) for s in seen] == [
            ("anonymous", None, "anon-1"),
            ("anonymous", None, "anon-2"),
            ("anonymous", None, None),
        ]

    @pytest.mark.swallows_internal_errors
    async def test_a_raising_resolver_proceeds_anonymous_and_is_counted(self) -> None:
        """A resolver error is counted; the request answers 200 as anonymous."""
        before = obs.stats()["internal_errors"]
        app = ScopeMiddleware(plain_app, actor=async_header_actor)
        with capture() as captured:
            messages = await run_asgi(app, http_scope([(b"x-user", b"fail")]))
        assert messages[0]["status"] == 200
        assert [(r["actor_type"], r["actor_id"]) for r in rows(captured)] == [("anonymous", None)]
        assert obs.stats()["internal_errors"] == before + 1

    @pytest.mark.swallows_internal_errors
    async def test_a_resolver_returning_a_non_actor_is_counted(self) -> None:
        """A resolver returning a user id instead of an Actor is anonymous, counted."""
        before = obs.stats()["internal_errors"]
        app = ScopeMiddleware(plain_app, actor=lambda scope: "u_1")  # type: ignore[arg-type, return-value]
        with capture() as captured:
            await run_asgi(app, http_scope())
        assert [r["actor_type"] for r in rows(captured)] == ["anonymous"]
        assert obs.stats()["internal_errors"] == before + 1

    async def test_the_scope_is_held_until_the_body_is_sent(self) -> None:
        """Every message of a streamed response is sent inside the request's scope."""
        seen_at_send: list[str | None] = []

        async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(3):
                mark(f"chunk-{i}")
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        async def send(message: Message) -> None:
            seen_at_send.append(obs.current_scope().request_id)

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        app = ScopeMiddleware(streaming_app)
        scope = http_scope([(b"x-request-id", b"req_stream")])
        with capture() as captured:
            await app(scope, receive, send)
        assert seen_at_send == ["req_stream"] * 5
        assert [r["request_id"] for r in rows(captured)] == ["req_stream"] * 3

    async def test_websocket_connections_get_a_scope_and_the_id_on_accept(self) -> None:
        """A WebSocket runs in its own scope; the accept message echoes the id."""
        sent: list[Message] = []

        async def ws_app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            mark("ws")
            await send({"type": "websocket.close", "code": 1000})

        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        app = ScopeMiddleware(ws_app)
        scope = http_scope([(b"x-request-id", b"req_ws")], kind="websocket")
        with capture() as captured:
            await app(scope, receive, send)
        assert sent[0] == {
            "type": "websocket.accept",
            "headers": [(b"x-request-id", b"req_ws")],
        }
        assert [(r["step"], r["request_id"], r["ip"]) for r in rows(captured)] == [
            ("ws", "req_ws", "203.0.113.5")
        ]

    async def test_lifespan_passes_through_untouched(self) -> None:
        """Lifespan events reach the app with the server's own callables, unscoped."""
        seen: list[tuple[Any, Any, Any, obs.Scope]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope, receive, send, obs.current_scope()))

        async def receive() -> Message:
            return {"type": "lifespan.startup"}

        async def send(message: Message) -> None:
            return None

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        await ScopeMiddleware(app, actor=header_actor)(scope, receive, send)
        assert seen == [(scope, receive, send, obs.Scope())]

    async def test_the_callers_scope_is_restored_and_errors_pass_through(self) -> None:
        """An app error propagates unchanged, and no scope outlives the request."""
        boom = ValueError("boom")

        async def failing_app(scope: Any, receive: Any, send: Any) -> None:
            raise boom

        with pytest.raises(ValueError, match="boom") as raised:
            await run_asgi(ScopeMiddleware(failing_app), http_scope())
        assert raised.value is boom
        assert obs.current_scope() == obs.Scope()

    @settings(max_examples=50, deadline=None)
    @given(
        headers=st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        b"x-forwarded-for",
                        b"user-agent",
                        b"x-request-id",
                        b"cookie",
                        b"x-posthog-distinct-id",
                        b"x-other",
                    ]
                ),
                st.binary(max_size=200),
            ),
            max_size=8,
        ),
        client=st.sampled_from([CLIENT, PROXY, None, ("testclient", 1)]),
    )
    def test_any_headers_reach_the_app_with_a_valid_request_id(
        self, headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None
    ) -> None:
        """No header value can fail the request or leave it without a request id."""
        app = ScopeMiddleware(plain_app, trusted_proxies=TRUSTED)
        with capture() as captured:
            messages = asyncio.run(run_asgi(app, http_scope(headers, client=client)))
        echoed = response_headers(messages)[b"x-request-id"].decode()
        assert [r["request_id"] for r in rows(captured)] == [echoed]


class TestStarlette:
    """The middleware in a Starlette app, through Starlette's TestClient."""

    def test_each_request_carries_its_own_fields(self) -> None:
        """Two requests record their own ip, user agent, request id and actor."""
        client = TestClient(starlette_app(actor=header_actor), client=CLIENT)
        with capture() as captured:
            client.get(
                "/",
                headers={"user-agent": "ua-1", "x-request-id": "r1", "x-user": "u_1"},
            )
            client.get("/", headers={"user-agent": "ua-2", "x-request-id": "r2"})
        assert rows(captured) == [
            {
                "step": "index",
                "actor_type": "user",
                "actor_id": "u_1",
                "ip": "203.0.113.5",
                "user_agent": "ua-1",
                "request_id": "r1",
            },
            {
                "step": "index",
                "actor_type": "anonymous",
                "actor_id": None,
                "ip": "203.0.113.5",
                "user_agent": "ua-2",
                "request_id": "r2",
            },
        ]

    def test_current_scope_inside_the_route(self) -> None:
        """obs.current_scope() in a route shows the request's values."""
        client = TestClient(starlette_app(), client=CLIENT, cookies={})
        response = client.get(
            "/",
            headers={
                "user-agent": "ua",
                "x-request-id": "r1",
                "cookie": POSTHOG_COOKIE,
            },
        )
        assert response.json() == {
            "actor_type": "anonymous",
            "actor_id": None,
            "distinct_id": "anon-1",
            "ip": "203.0.113.5",
            "user_agent": "ua",
            "request_id": "r1",
        }
        assert response.headers["x-request-id"] == "r1"

    def test_forged_forwarded_for_is_ignored(self) -> None:
        """An untrusted client writing X-Forwarded-For gains nothing."""
        client = TestClient(starlette_app(trusted_proxies=TRUSTED), client=CLIENT)
        response = client.get("/", headers={"x-forwarded-for": "1.1.1.1"})
        assert response.json()["ip"] == "203.0.113.5"

    def test_a_trusted_proxy_chain_yields_the_client(self) -> None:
        """Behind the trusted proxies, the address the first proxy saw is recorded."""
        client = TestClient(starlette_app(trusted_proxies=TRUSTED), client=PROXY)
        response = client.get("/", headers={"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.3"})
        assert response.json()["ip"] == "198.51.100.7"

    def test_a_bad_request_id_is_replaced_and_echoed(self) -> None:
        """A request id with a space is replaced; the response carries the new one."""
        client = TestClient(starlette_app(), client=CLIENT)
        response = client.get("/", headers={"x-request-id": "not ok"})
        echoed = response.headers["x-request-id"]
        assert echoed != "not ok"
        assert response.json()["request_id"] == echoed

    @pytest.mark.parametrize("path", ["/login", "/sync-login"])
    def test_set_actor_applies_to_later_records_of_that_request_only(self, path: str) -> None:
        """set_actor applies to later records of its request, not earlier or next."""
        client = TestClient(starlette_app(), client=CLIENT)
        with capture() as captured:
            client.get(path, headers={"x-login": "u_7", "x-request-id": "r1"})
            client.get("/", headers={"x-request-id": "r2"})
        assert [
            (r["step"], r["actor_type"], r["actor_id"], r["request_id"]) for r in rows(captured)
        ] == [
            ("before-login", "anonymous", None, "r1"),
            ("after-login", "user", "u_7", "r1"),
            ("index", "anonymous", None, "r2"),
        ]

    @pytest.mark.swallows_internal_errors
    def test_a_raising_resolver_answers_200_as_anonymous(self) -> None:
        """The session store being down does not fail the request."""
        client = TestClient(starlette_app(actor=header_actor), client=CLIENT)
        response = client.get("/", headers={"x-user": "fail"})
        assert response.status_code == 200
        assert response.json()["actor_type"] == "anonymous"

    def test_an_error_page_carries_the_request_id_when_wrapping_the_app(self) -> None:
        """Wrapping the outermost app, even Starlette's own 500 page echoes the id."""

        async def broken(request: Request) -> JSONResponse:
            raise RuntimeError("bug in the route")

        app = ScopeMiddleware(Starlette(routes=[Route("/", broken)]))
        client = TestClient(app, client=CLIENT, raise_server_exceptions=False)
        response = client.get("/", headers={"x-request-id": "r500"})
        assert (response.status_code, response.headers["x-request-id"]) == (500, "r500")

    def test_a_streaming_response_records_with_the_requests_scope(self) -> None:
        """Chunks produced while streaming record with the request's scope."""
        client = TestClient(starlette_app(actor=header_actor), client=CLIENT)
        with capture() as captured:
            response = client.get("/stream", headers={"x-request-id": "rs", "x-user": "u_3"})
        assert response.text == "rs\nrs\nrs\n"
        assert [(r["step"], r["actor_id"], r["request_id"], r["ip"]) for r in rows(captured)] == [
            (f"chunk-{i}", "u_3", "rs", "203.0.113.5") for i in range(3)
        ]

    def test_a_websocket_records_with_its_scope(self) -> None:
        """A WebSocket endpoint runs in the connection's scope."""
        client = TestClient(starlette_app(actor=header_actor), client=CLIENT)
        with (
            capture() as captured,
            client.websocket_connect(
                "/ws", headers={"x-request-id": "rw", "x-user": "u_4"}
            ) as websocket,
        ):
            fields = websocket.receive_json()
        assert (fields["request_id"], fields["actor_id"]) == ("rw", "u_4")
        assert [(r["step"], r["request_id"]) for r in rows(captured)] == [("ws", "rw")]


class TestConcurrency:
    """Concurrent requests in one event loop never see each other's scope."""

    async def test_fifty_concurrent_requests_never_mix_scopes(self) -> None:
        """50 requests held in flight together each record only their own values."""
        count = 50
        arrived = 0
        everyone_in = asyncio.Event()

        async def endpoint(request: Request) -> JSONResponse:
            nonlocal arrived
            n = int(request.query_params["n"])
            mark(f"first-{n}")
            arrived += 1
            if arrived == count:
                everyone_in.set()
            # Every request waits here until all 50 are in flight at once.
            await asyncio.wait_for(everyone_in.wait(), timeout=10)
            if n % 2:
                obs.set_actor(obs.Actor.user(f"u_{n}"))
            mark(f"second-{n}")
            return JSONResponse(scope_fields())

        app = ScopeMiddleware(
            Starlette(routes=[Route("/", endpoint)]), trusted_proxies=["127.0.0.1"]
        )
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 123))

        async def one(client: httpx.AsyncClient, n: int) -> httpx.Response:
            headers = {
                "x-forwarded-for": f"198.51.100.{n}",
                "user-agent": f"agent/{n}",
                "x-request-id": f"req-{n}",
            }
            return await client.get("/", params={"n": n}, headers=headers)

        with capture() as captured:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                responses = await asyncio.gather(*(one(client, n) for n in range(count)))

        def expected(n: int, step: str) -> dict[str, Any]:
            user = step == "second" and n % 2
            return {
                "step": f"{step}-{n}",
                "actor_type": "user" if user else "anonymous",
                "actor_id": f"u_{n}" if user else None,
                "ip": f"198.51.100.{n}",
                "user_agent": f"agent/{n}",
                "request_id": f"req-{n}",
            }

        got = sorted(rows(captured), key=lambda r: r["step"])
        want = sorted(
            (expected(n, step) for n in range(count) for step in ("first", "second")),
            key=lambda r: r["step"],
        )
        assert got == want
        for n, response in enumerate(responses):
            assert response.headers["x-request-id"] == f"req-{n}"
            assert response.json()["ip"] == f"198.51.100.{n}"


class TestTenantAndDenials:
    """organization= / workspace= resolvers, and audit_denied (off by default here)."""

    @staticmethod
    def app(**options: Any) -> Any:
        async def tenant(request: Request) -> JSONResponse:
            current = obs.current_scope()
            return JSONResponse({"org": current.organization, "ws": current.workspace})

        async def refuse(request: Request) -> PlainTextResponse:
            return PlainTextResponse("no", status_code=int(request.path_params["status"]))

        routes = [Route("/tenant", tenant), Route("/refuse/{status:int}", refuse)]
        return ScopeMiddleware(Starlette(routes=routes), **options)

    async def get(self, app: Any, path: str, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, headers=headers)

    async def test_tenant_resolvers_sync_and_async(self) -> None:
        """Each resolver takes the connection scope; sync or async; both fields are set."""

        def organization(scope: Scope) -> str | None:
            return dict(scope["headers"]).get(b"x-org", b"").decode() or None

        async def workspace(scope: Scope) -> str:
            await asyncio.sleep(0)
            return "ws_1"

        app = self.app(organization=organization, workspace=workspace)
        assert (await self.get(app, "/tenant", **{"x-org": "org_1"})).json() == {
            "org": "org_1",
            "ws": "ws_1",
        }
        assert (await self.get(app, "/tenant")).json() == {"org": None, "ws": "ws_1"}

    @pytest.mark.swallows_internal_errors
    async def test_a_tenant_that_is_not_a_string_is_counted(self) -> None:
        """A resolver returning an int (or raising) leaves the field unset, counted."""
        app = self.app(organization=lambda scope: 42, workspace=lambda scope: 1 / 0)
        assert (await self.get(app, "/tenant")).json() == {"org": None, "ws": None}
        assert obs.stats()["internal_errors"] == 2

    def test_a_tenant_resolver_must_be_callable(self) -> None:
        """organization= takes a function, named in the message."""
        with pytest.raises(obs.ConfigurationError, match="organization='org_1' is not callable"):
            ScopeMiddleware(plain_app, organization="org_1")  # type: ignore[arg-type]

    async def test_denials_are_recorded_only_when_asked(self) -> None:
        """audit_denied=True records 401 and 403 (route template, method, status), queued
        at once; other statuses and the default middleware record nothing."""
        quiet, loud = self.app(), self.app(audit_denied=True, actor=header_actor)
        with capture() as captured:
            for status in (401, 403):
                assert (await self.get(quiet, f"/refuse/{status}")).status_code == status
            for status in (200, 403, 404, 401, 500):
                await self.get(loud, f"/refuse/{status}", **{"x-user": "u_1", "x-request-id": "r"})
        assert [
            (a["action"], a["outcome"], a["actor_id"], a["request_id"], a["metadata"])
            for a in captured.audits
        ] == [
            ("access.denied", "failure", "u_1", "r", {"method": "GET", "route": "/refuse/{status}", "status": 403}),  # noqa: E501
            ("access.denied", "failure", "u_1", "r", {"method": "GET", "route": "/refuse/{status}", "status": 401}),  # noqa: E501
        ]  # fmt: skip
