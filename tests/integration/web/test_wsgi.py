"""The WSGI ScopeMiddleware: raw environs, Flask's test client and a real server."""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from flask import Flask, Response, jsonify, request
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server

import obs_sdk as obs
from obs_sdk.integrations.wsgi import ScopeMiddleware
from obs_sdk.testing import capture
from tests.support.web import POSTHOG_COOKIE, TRUSTED, mark, rows, scope_fields

CLIENT = "203.0.113.5"
PROXY = "10.0.0.2"


def header_actor(environ: dict[str, Any]) -> obs.Actor | None:
    """Resolve the user from an ``X-User`` header; ``X-User: fail`` raises."""
    user = environ.get("HTTP_X_USER")
    if user == "fail":
        raise RuntimeError("session store is down")
    return obs.Actor.user(user) if user else None


def make_environ(**values: str) -> dict[str, Any]:
    """Build a complete WSGI environ by hand, peer CLIENT unless given."""
    environ: dict[str, Any] = {"REMOTE_ADDR": CLIENT, **values}
    setup_testing_defaults(environ)
    return environ


class StartResponse:
    """A start_response that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.calls.append((status, headers, exc_info))
        return lambda data: None

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.calls[-1][1])


def run_wsgi(app: Any, environ: dict[str, Any]) -> tuple[StartResponse, bytes]:
    """Call *app* like a server: iterate the body, then close it."""
    start_response = StartResponse()
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return start_response, body


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A bare WSGI app that records one step and answers 200."""
    mark("handled")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def streaming_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A generator app: each chunk records and reports the request id it sees."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        for i in range(3):
            mark(f"chunk-{i}")
            yield f"{obs.current_scope().request_id}\n".encode()
    finally:
        mark("closed")


def flask_app(**options: Any) -> Flask:
    """A Flask app with the middleware installed the Flask way."""
    app = Flask(__name__)

    @app.get("/")
    def index() -> Any:
        mark("index")
        return jsonify(scope_fields())

    @app.get("/login")
    def login() -> Any:
        mark("before-login")
        obs.set_actor(obs.Actor.user(request.headers["X-Login"]))
        mark("after-login")
        return jsonify(scope_fields())

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for i in range(3):
                mark(f"chunk-{i}")
                yield f"{obs.current_scope().request_id}\n"

        return Response(chunks(), mimetype="text/plain")

    app.wsgi_app = ScopeMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


class TestConstruction:
    """Options are checked when the middleware is built."""

    def test_an_async_resolver_is_rejected(self) -> None:
        """A WSGI request cannot await, so an async resolver fails at startup."""

        async def resolver(environ: dict[str, Any]) -> obs.Actor | None:
            return None

        with pytest.raises(obs.ConfigurationError, match="async"):
            ScopeMiddleware(plain_app, actor=resolver)  # type: ignore[arg-type]

    def test_an_object_with_an_async_call_is_rejected(self) -> None:
        """A callable object whose __call__ is async is async too."""

        class Resolver:
            async def __call__(self, environ: dict[str, Any]) -> None:
                return None

        with pytest.raises(obs.ConfigurationError, match="async"):
            ScopeMiddleware(plain_app, actor=Resolver())  # type: ignore[arg-type]

    def test_a_bad_trusted_proxy_names_the_entry(self) -> None:
        """A typo in trusted_proxies fails at startup, naming the entry."""
        with pytest.raises(obs.ConfigurationError, match=re.escape("'10.0.0.0/33'")):
            ScopeMiddleware(plain_app, trusted_proxies=["10.0.0.0/33"])

    def test_a_bad_header_name_is_rejected(self) -> None:
        """request_id_header must be an HTTP field name."""
        with pytest.raises(obs.ConfigurationError, match="request_id_header"):
            ScopeMiddleware(plain_app, request_id_header="x request id")


class TestRawEnvirons:
    """The middleware driven with environs built by hand."""

    def test_records_carry_the_request_fields(self) -> None:
        """ip, user agent, request id and actor come from the environ."""
        app = ScopeMiddleware(plain_app, actor=header_actor)
        environ = make_environ(
            HTTP_USER_AGENT="curl/8.5", HTTP_X_REQUEST_ID="req_9", HTTP_X_USER="u_1"
        )
        with capture() as captured:
            run_wsgi(app, environ)
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

    def test_the_request_id_is_echoed_through_start_response(self) -> None:
        """The response headers carry the request id."""
        start_response, _ = run_wsgi(
            ScopeMiddleware(plain_app), make_environ(HTTP_X_REQUEST_ID="req_9")
        )
        assert start_response.headers == {
            "Content-Type": "text/plain",
            "x-request-id": "req_9",
        }

    @pytest.mark.parametrize("inbound", ["x" * 129, "two words", "cafÃ©", ""])
    def test_a_bad_request_id_is_replaced_and_echoed(self, inbound: str) -> None:
        """An unusable inbound id is replaced; the new one is echoed and recorded."""
        with capture() as captured:
            start_response, _ = run_wsgi(
                ScopeMiddleware(plain_app), make_environ(HTTP_X_REQUEST_ID=inbound)
            )
        echoed = start_response.headers["x-request-id"]
        assert echoed != inbound
        assert len(echoed) == 32
        assert [r["request_id"] for r in rows(captured)] == [echoed]

    def test_the_apps_own_request_id_header_is_kept(self) -> None:
        """A header the app set itself is neither replaced nor duplicated."""

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("X-Request-ID", "app-chosen")])
            return []

        start_response, _ = run_wsgi(ScopeMiddleware(app), make_environ())
        assert start_response.calls[0][1] == [("X-Request-ID", "app-chosen")]

    def test_exc_info_passes_through_start_response(self) -> None:
        """An error page's exc_info reaches the server's start_response."""

        def fail() -> None:
            raise ValueError("boom")

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            try:
                fail()
            except ValueError:
                start_response("500 Internal Server Error", [], sys.exc_info())
            return [b"error"]

        start_response, _ = run_wsgi(ScopeMiddleware(app), make_environ())
        assert isinstance(start_response.calls[0][2][1], ValueError)

    def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(self) -> None:
        """Only a trusted peer may name the client."""
        app = ScopeMiddleware(plain_app, trusted_proxies=TRUSTED)
        with capture() as captured:
            run_wsgi(app, make_environ(HTTP_X_FORWARDED_FOR="1.1.1.1"))
        assert [r["ip"] for r in rows(captured)] == ["203.0.113.5"]

    def test_a_trusted_proxy_chain_yields_the_client(self) -> None:
        """Behind trusted proxies, the right-most untrusted entry is the client."""
        app = ScopeMiddleware(plain_app, trusted_proxies=TRUSTED)
        environ = make_environ(
            REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7,10.0.0.9"
        )
        with capture() as captured:
            run_wsgi(app, environ)
        assert [r["ip"] for r in rows(captured)] == ["198.51.100.7"]

    def test_no_actor_is_anonymous_with_the_posthog_id(self) -> None:
        """Without an actor, the PostHog cookie or header fills the distinct id."""
        seen: list[dict[str, Any]] = []

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            seen.append(scope_fields())
            return plain_app(environ, start_response)

        middleware = ScopeMiddleware(app, actor=header_actor)
        run_wsgi(middleware, make_environ(HTTP_COOKIE=POSTHOG_COOKIE))
        run_wsgi(middleware, make_environ(HTTP_X_POSTHOG_DISTINCT_ID="anon-2"))
        run_wsgi(middleware, make_environ())
        assert [(s["actor_type"], s["actor_id"], s["distinct_id"]) for s in seen] == [
            ("anonymous", None, "anon-1"),
            ("anonymous", None, "anon-2"),
            ("anonymous", None, None),
        ]

    @pytest.mark.swallows_internal_errors
    def test_a_raising_resolver_proceeds_anonymous_and_is_counted(self) -> None:
        """A resolver error is counted; the request answers 200 as anonymous."""
        before = obs.stats()["internal_errors"]
        app = ScopeMiddleware(plain_app, actor=header_actor)
        with capture() as captured:
            start_response, _ = run_wsgi(app, make_environ(HTTP_X_USER="fail"))
        assert start_response.calls[0][0] == "200 OK"
        assert [(r["actor_type"], r["actor_id"]) for r in rows(captured)] == [("anonymous", None)]
        assert obs.stats()["internal_errors"] == before + 1

    @pytest.mark.swallows_internal_errors
    def test_a_resolver_returning_a_coroutine_is_counted(self) -> None:
        """An awaitable from a sync-looking resolver is closed, counted, anonymous."""

        async def lookup() -> obs.Actor:
            return obs.Actor.user("u_1")

        before = obs.stats()["internal_errors"]
        app = ScopeMiddleware(plain_app, actor=lambda environ: lookup())  # type: ignore[arg-type, return-value]
        with capture() as captured:
            run_wsgi(app, make_environ())
        assert [r["actor_type"] for r in rows(captured)] == ["anonymous"]
        assert obs.stats()["internal_errors"] == before + 1

    def test_the_scope_lasts_until_the_iterable_is_closed(self) -> None:
        """Chunks and the generator's cleanup at close() all record in the scope."""
        app = ScopeMiddleware(streaming_app)
        with capture() as captured:
            _, body = run_wsgi(app, make_environ(HTTP_X_REQUEST_ID="rs"))
        assert body == b"rs\nrs\nrs\n"
        assert [(r["step"], r["request_id"]) for r in rows(captured)] == [
            ("chunk-0", "rs"),
            ("chunk-1", "rs"),
            ("chunk-2", "rs"),
            ("closed", "rs"),
        ]

    def test_closing_early_closes_the_apps_iterable_in_the_scope(self) -> None:
        """A client that disconnects early still gets the app's cleanup recorded."""
        app = ScopeMiddleware(streaming_app)
        with capture() as captured:
            result = app(make_environ(HTTP_X_REQUEST_ID="rs"), StartResponse())
            first = next(iter(result))
            result.close()  # type: ignore[attr-defined]
        assert first == b"rs\n"
        assert [(r["step"], r["request_id"]) for r in rows(captured)] == [
            ("chunk-0", "rs"),
            ("closed", "rs"),
        ]

    def test_the_server_threads_context_is_never_changed(self) -> None:
        """Between the call and close(), the server's own context has no scope."""
        app = ScopeMiddleware(streaming_app)
        result = app(make_environ(HTTP_X_REQUEST_ID="rs"), StartResponse())
        assert obs.current_scope() == obs.Scope()
        next(iter(result))
        assert obs.current_scope() == obs.Scope()
        result.close()  # type: ignore[attr-defined]
        assert obs.current_scope() == obs.Scope()

    def test_a_server_iterating_on_another_thread_keeps_the_scope(self) -> None:
        """The body may be consumed on a different thread than the call."""
        app = ScopeMiddleware(streaming_app)
        with capture() as captured:
            result = app(make_environ(HTTP_X_REQUEST_ID="rt"), StartResponse())
            with ThreadPoolExecutor(1) as pool:
                body = pool.submit(lambda: b"".join(result)).result()
                pool.submit(result.close).result()  # type: ignore[attr-defined]
        assert body == b"rt\nrt\nrt\n"
        assert {r["request_id"] for r in rows(captured)} == {"rt"}

    def test_a_response_never_closed_leaks_nothing(self) -> None:
        """A server that forgets close() cannot leak a scope into the next request."""
        app = ScopeMiddleware(streaming_app)
        abandoned = app(make_environ(HTTP_X_REQUEST_ID="r1"), StartResponse())
        next(iter(abandoned))
        with capture() as captured:
            run_wsgi(ScopeMiddleware(plain_app), make_environ(HTTP_X_REQUEST_ID="r2"))
        assert [r["request_id"] for r in rows(captured)] == ["r2"]
        assert obs.current_scope() == obs.Scope()

    def test_app_errors_pass_through_and_leave_no_scope(self) -> None:
        """An exception from the app propagates unchanged, and no scope is left."""
        boom = ValueError("boom")

        def failing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            raise boom

        with pytest.raises(ValueError, match="boom") as raised:
            run_wsgi(ScopeMiddleware(failing_app), make_environ())
        assert raised.value is boom
        assert obs.current_scope() == obs.Scope()

    def test_close_is_called_once(self) -> None:
        """A second close() (a defensive server) does not close the app twice."""
        closes: list[str | None] = []

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                return iter([b"x"])

            def close(self) -> None:
                closes.append(obs.current_scope().request_id)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            start_response("200 OK", [])
            return Body()

        result = ScopeMiddleware(app)(make_environ(HTTP_X_REQUEST_ID="rc"), StartResponse())
        result.close()  # type: ignore[attr-defined]
        result.close()  # type: ignore[attr-defined]
        assert closes == ["rc"]

    @settings(max_examples=50, deadline=None)
    @given(
        values=st.dictionaries(
            st.sampled_from(
                [
                    "HTTP_X_FORWARDED_FOR",
                    "HTTP_USER_AGENT",
                    "HTTP_X_REQUEST_ID",
                    "HTTP_COOKIE",
                    "HTTP_X_POSTHOG_DISTINCT_ID",
                    "REMOTE_ADDR",
                ]
            ),
            st.text(max_size=200),
        )
    )
    def test_any_header_values_reach_the_app_with_a_valid_request_id(
        self, values: dict[str, str]
    ) -> None:
        """No header value can fail the request or leave it without a request id."""
        app = ScopeMiddleware(plain_app, trusted_proxies=TRUSTED)
        with capture() as captured:
            start_response, _ = run_wsgi(app, make_environ(**values))
        echoed = start_response.headers["x-request-id"]
        assert [r["request_id"] for r in rows(captured)] == [echoed]


class TestFlask:
    """The middleware around a Flask app, through Flask's test client."""

    def test_each_request_carries_its_own_fields(self) -> None:
        """Two requests record their own ip, user agent, request id and actor."""
        client = flask_app(actor=header_actor).test_client()
        with capture() as captured:
            client.get(
                "/",
                headers={"User-Agent": "ua-1", "X-Request-ID": "r1", "X-User": "u_1"},
                environ_base={"REMOTE_ADDR": "203.0.113.5"},
            )
            client.get(
                "/",
                headers={"User-Agent": "ua-2", "X-Request-ID": "r2"},
                environ_base={"REMOTE_ADDR": "198.51.100.9"},
            )
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
                "ip": "198.51.100.9",
                "user_agent": "ua-2",
                "request_id": "r2",
            },
        ]

    def test_current_scope_inside_the_view(self) -> None:
        """obs.current_scope() in a view shows the request's values."""
        client = flask_app().test_client()
        client.set_cookie("ph_phc_test_posthog", POSTHOG_COOKIE.split("=", 1)[1])
        response = client.get(
            "/",
            headers={"User-Agent": "ua", "X-Request-ID": "r1"},
            environ_base={"REMOTE_ADDR": CLIENT},
        )
        assert response.get_json() == {
            "actor_type": "anonymous",
            "actor_id": None,
            "distinct_id": "anon-1",
            "ip": "203.0.113.5",
            "user_agent": "ua",
            "request_id": "r1",
        }
        assert response.headers["X-Request-ID"] == "r1"

    def test_forged_forwarded_for_is_ignored(self) -> None:
        """An untrusted client writing X-Forwarded-For gains nothing."""
        client = flask_app(trusted_proxies=TRUSTED).test_client()
        response = client.get(
            "/",
            headers={"X-Forwarded-For": "1.1.1.1"},
            environ_base={"REMOTE_ADDR": CLIENT},
        )
        assert response.get_json()["ip"] == "203.0.113.5"

    def test_a_trusted_proxy_chain_yields_the_client(self) -> None:
        """Behind the trusted proxies, the address the first proxy saw is recorded."""
        client = flask_app(trusted_proxies=TRUSTED).test_client()
        response = client.get(
            "/",
            headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.0.0.3"},
            environ_base={"REMOTE_ADDR": PROXY},
        )
        assert response.get_json()["ip"] == "198.51.100.7"

    def test_a_bad_request_id_is_replaced_and_echoed(self) -> None:
        """A request id with a space is replaced; the response carries the new one."""
        client = flask_app().test_client()
        response = client.get("/", headers={"X-Request-ID": "not ok"})
        echoed = response.headers["X-Request-ID"]
        assert echoed != "not ok"
        assert response.get_json()["request_id"] == echoed

    def test_set_actor_applies_to_later_records_of_that_request_only(self) -> None:
        """set_actor applies to later records of its request, not earlier or next."""
        client = flask_app().test_client()
        with capture() as captured:
            client.get("/login", headers={"X-Login": "u_7", "X-Request-ID": "r1"})
            client.get("/", headers={"X-Request-ID": "r2"})
        steps = [
            (r["step"], r["actor_type"], r["actor_id"], r["request_id"]) for r in rows(captured)
        ]
        assert steps == [
            ("before-login", "anonymous", None, "r1"),
            ("after-login", "user", "u_7", "r1"),
            ("index", "anonymous", None, "r2"),
        ]

    @pytest.mark.swallows_internal_errors
    def test_a_raising_resolver_answers_200_as_anonymous(self) -> None:
        """The session store being down does not fail the request."""
        client = flask_app(actor=header_actor).test_client()
        response = client.get("/", headers={"X-User": "fail"})
        assert response.status_code == 200
        assert response.get_json()["actor_type"] == "anonymous"

    def test_a_streaming_response_records_with_the_requests_scope(self) -> None:
        """A streamed body records with the request's scope, after the view returned."""
        client = flask_app(actor=header_actor).test_client()
        with capture() as captured:
            with client.get(
                "/stream",
                headers={"X-Request-ID": "rs", "X-User": "u_3"},
                environ_base={"REMOTE_ADDR": CLIENT},
            ) as response:
                body = response.get_data(as_text=True)
        assert body == "rs\nrs\nrs\n"
        steps = [(r["step"], r["actor_id"], r["request_id"], r["ip"]) for r in rows(captured)]
        assert steps == [(f"chunk-{i}", "u_3", "rs", "203.0.113.5") for i in range(3)]


class TestConcurrency:
    """Concurrent requests on a real threaded server never see each other's scope."""

    def test_fifty_concurrent_requests_never_mix_scopes(self) -> None:
        """50 requests held in flight together each record only their own values."""
        count = 50
        everyone_in = threading.Barrier(count, timeout=10)
        app = Flask(__name__)

        @app.get("/")
        def endpoint() -> Any:
            n = int(request.args["n"])
            mark(f"first-{n}")
            # Every request waits here until all 50 are in flight at once.
            everyone_in.wait()
            if n % 2:
                obs.set_actor(obs.Actor.user(f"u_{n}"))
            mark(f"second-{n}")
            return jsonify(scope_fields())

        app.wsgi_app = ScopeMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, trusted_proxies=["127.0.0.1"]
        )
        server = make_server("127.0.0.1", 0, app, threaded=True)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()

        def one(n: int) -> tuple[str | None, dict[str, Any]]:
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
            try:
                connection.request(
                    "GET",
                    f"/?n={n}",
                    headers={
                        "X-Forwarded-For": f"198.51.100.{n}",
                        "User-Agent": f"agent/{n}",
                        "X-Request-ID": f"req-{n}",
                    },
                )
                response = connection.getresponse()
                return response.getheader("x-request-id"), json.loads(response.read())
            finally:
                connection.close()

        try:
            with capture() as captured, ThreadPoolExecutor(count) as pool:
                answers = list(pool.map(one, range(count)))
        finally:
            server.shutdown()
            serving.join()
            server.server_close()

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
        for n, (echoed, fields) in enumerate(answers):
            assert echoed == f"req-{n}"
            assert fields["ip"] == f"198.51.100.{n}"
