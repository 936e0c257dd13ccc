"""Shared helpers of the web integration tests: real servers on loopback, record views."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import obs_sdk as obs

TRUSTED = ["10.0.0.0/8"]
POSTHOG_COOKIE = "ph_phc_test_posthog=%7B%22distinct_id%22%3A%22anon-1%22%7D"


@obs.audited("web.step", metadata={"step": "{step}"})
def mark(step: str) -> None:
    """Leave one audit record named by *step*."""


def rows(captured: Any) -> list[dict[str, Any]]:
    """Return the fields the web suites check, one dict per audit record."""
    keys = ("actor_type", "actor_id", "ip", "user_agent", "request_id")
    return [{"step": a["metadata"]["step"], **{k: a[k] for k in keys}} for a in captured.audits]


def scope_fields() -> dict[str, Any]:
    """Return the current scope as plain JSON-able values."""
    current = obs.current_scope()
    actor = current.actor
    return {
        "actor_type": actor.type if actor else None,
        "actor_id": actor.id if actor else None,
        "distinct_id": actor.distinct_id if actor else None,
        "ip": current.ip,
        "user_agent": current.user_agent,
        "request_id": current.request_id,
    }


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve a WSGI app with werkzeug on a free loopback port; yield its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a thread; yield its base URL.

    The socket listens before uvicorn starts, so requests wait in the backlog rather than
    the test polling for readiness. proxy_headers=False: the app's middleware, not uvicorn,
    decides whom to believe about X-Forwarded-For.
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(
        app, lifespan="off", proxy_headers=False, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
