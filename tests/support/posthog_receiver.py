"""A loopback PostHog capture endpoint that the real ``posthog`` client sends to.

posthog 7.91.1 speaks two capture protocols. A client picks one when built: its
``capture_mode`` argument, else ``POSTHOG_CAPTURE_MODE``, else ``"v0"``
(posthog/capture_mode.py, ``_resolve_capture_mode``).

- ``v0`` posts ``{"api_key", "batch", "historical_migration", "sent_at"}`` to
  ``/batch/``; ``gzip=True`` gzips the body and sends ``Content-Encoding: gzip``
  (posthog/request.py, ``post``). Any 200 is a success.
- ``v1`` posts ``{"created_at", "batch"}`` to ``/i/v1/analytics/events`` with
  ``Authorization: Bearer <project api key>`` and ``PostHog-Sdk-Info``,
  ``PostHog-Attempt``, ``PostHog-Request-Id`` headers. Each event has an
  ``options`` object (``$process_person_profile`` moves to
  ``options.process_person_profile``) and no ``$lib``/``$lib_version``. The body
  is compressed per ``capture_compression`` (gzip, zlib ``deflate``, ``zstd``).
  A 2xx must carry a ``results`` map keyed by event uuid, or the client reports
  the batch as failed (posthog/capture_v1.py).

`PosthogReceiver` answers both on 127.0.0.1, records every request and keeps the
events of every request it accepted. Thread-safe: requests are handled on the
server's threads, and tests wait on a condition, never in a sleep loop. A
conftest fixture is three lines::

    @pytest.fixture
    def posthog_receiver() -> Iterator[PosthogReceiver]:
        with PosthogReceiver() as receiver:
            yield receiver
"""

from __future__ import annotations

import gzip
import importlib
import json
import sys
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from posthog import Posthog

V0_PATH = "/batch/"
V1_PATH = "/i/v1/analytics/events"
AI_PATH = "/i/v0/ai/batch/"  # capture_ai(): v0 shape, whatever capture_mode says
TEST_API_KEY = "phc_obs_sdk_test"

_PROTOCOL_BY_PATH = {V0_PATH: "v0", AI_PATH: "v0", V1_PATH: "v1"}

# v1 lifts these properties into typed fields (capture_v1.py, _OPTION_SENTINELS
# and _TOPLEVEL_SENTINELS); as_legacy() puts them back.
_V1_OPTIONS = {
    "cookieless_mode": "$cookieless_mode",
    "disable_skew_correction": "$ignore_sent_at",
    "product_tour_id": "$product_tour_id",
    "process_person_profile": "$process_person_profile",
}
_V1_TOP_LEVEL = {"session_id": "$session_id", "window_id": "$window_id"}


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One HTTP request as the receiver answered it.

    ``protocol`` is ``"v0"`` or ``"v1"`` on a capture path, else None. ``headers``
    have lower-case names. ``body`` is the decoded JSON (None when empty or
    undecodable). ``api_key`` is the body's ``api_key`` on v0 and the Bearer
    token on v1.
    """

    method: str
    path: str
    protocol: str | None
    headers: Mapping[str, str]
    body: Any
    api_key: str | None
    status: int


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class PosthogReceiver:
    """Receive what a real ``posthog`` client sends, on a free port of 127.0.0.1.

    Use it as a context manager (or call `start` and `stop`). ``events`` holds the
    events of accepted requests in arrival order, exactly as they were on the
    wire. `fail_with` answers an error status instead (the events of a refused
    request are not kept), `stalled` holds requests unanswered, and `stop` closes
    the port so connections are refused. Thread-safe.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._requests: list[ReceivedRequest] = []
        self._arrived = 0
        self._fail_status: int | None = None
        self._fail_remaining: int | None = None
        self._answering = threading.Event()
        self._answering.set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> PosthogReceiver:
        """Bind a free loopback port and serve on a daemon thread; return self."""
        if self._url is not None:
            raise RuntimeError("a PosthogReceiver starts once")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        host, port = server.server_address[:2]
        self._url = f"http://{host!s}:{port}"
        self._server = server
        # The poll interval bounds how long stop() waits for the accept loop.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="posthog-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port (later connections are refused); answer stalled requests."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._answering.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> PosthogReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The client's ``host``, e.g. ``http://127.0.0.1:40123``."""
        if self._url is None:
            raise RuntimeError("PosthogReceiver is not started")
        return self._url

    # -- what arrived ---------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the events of every accepted capture request, in order."""
        with self._cond:
            return list(self._events)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of every answered request, refused ones included, in order."""
        with self._cond:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """The number of requests that arrived, stalled ones included."""
        with self._cond:
            return self._arrived

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """Return the received events whose ``event`` is *name*."""
        return [event for event in self.events if event.get("event") == name]

    def clear(self) -> None:
        """Forget the events and requests received so far."""
        with self._cond:
            self._events.clear()
            self._requests.clear()
            self._arrived = 0

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least *count* events arrived and return them all.

        Raises:
            AssertionError: fewer arrived within *timeout* seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._events) >= count, timeout):
                answered = [(r.path, r.status) for r in self._requests]
                raise AssertionError(
                    f"expected {count} PostHog event(s) within {timeout}s, got "
                    f"{len(self._events)}; answered requests: {answered}"
                )
            return list(self._events)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> int:
        """Wait until *count* requests arrived (stalled or answered); return the count.

        Raises:
            AssertionError: fewer arrived within *timeout* seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._arrived >= count, timeout):
                raise AssertionError(
                    f"expected {count} request(s) within {timeout}s, got {self._arrived}"
                )
            return self._arrived

    # -- simulated trouble ----------------------------------------------------

    def fail_with(self, status: int, *, times: int | None = None) -> None:
        """Answer *status* to the next *times* requests, or to all until `recover`."""
        with self._cond:
            self._fail_status = status
            self._fail_remaining = times

    def recover(self) -> None:
        """Answer normally again."""
        with self._cond:
            self._fail_status = None
            self._fail_remaining = None

    @contextmanager
    def stalled(self) -> Iterator[None]:
        """Hold every request unanswered inside the block, like a hung PostHog.

        Leaving the block answers the held requests as usual. A client whose
        ``timeout`` runs out first closes its connection and reports the error.
        """
        self._answering.clear()
        try:
            yield
        finally:
            self._answering.set()

    # -- request handling (server threads) ------------------------------------

    def _arrive(self) -> None:
        with self._cond:
            self._arrived += 1
            self._cond.notify_all()
        self._answering.wait()

    def _answer(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any]:
        path = urlsplit(target).path
        protocol = _PROTOCOL_BY_PATH.get(path)
        body: Any = None
        api_key: str | None = None
        events: list[dict[str, Any]] = []
        status, reply = 200, None
        try:
            body = _decode(raw, headers.get("content-encoding", ""))
            api_key, events = _parse(protocol, path, headers, body)
        except _BadRequest as error:
            status, reply = error.status, {"detail": error.detail}
        with self._cond:
            if status == 200 and self._fail_status is not None:
                status, reply = self._fail_status, {"detail": "simulated outage"}
                if self._fail_remaining is not None:
                    self._fail_remaining -= 1
                    if self._fail_remaining <= 0:
                        self._fail_status = self._fail_remaining = None
            if status == 200:
                self._events.extend(events)
                reply = _success_reply(protocol, events)
            self._requests.append(
                ReceivedRequest(method, path, protocol, dict(headers), body, api_key, status)
            )
            self._cond.notify_all()
        return status, reply


def _decode(raw: bytes, content_encoding: str) -> Any:
    encoding = content_encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            data = raw
        elif encoding == "gzip":
            data = gzip.decompress(raw)
        elif encoding == "deflate":
            # posthog sends zlib-wrapped deflate (RFC 1950), not raw deflate.
            data = zlib.decompress(raw)
        elif encoding == "zstd":
            data = _zstd_decompress(raw)
        else:
            raise _BadRequest(415, f"unsupported Content-Encoding {encoding!r}")
        return json.loads(data) if data else None
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise _BadRequest(400, f"undecodable body: {error}") from None


def _zstd_decompress(raw: bytes) -> bytes:
    try:
        # Looked up by name: an optional package (posthog[zstd]) with no stubs.
        zstandard = importlib.import_module("zstandard")
    except ImportError:
        raise _BadRequest(415, "zstd needs the zstandard package") from None
    return bytes(zstandard.ZstdDecompressor().decompress(raw))


def _parse(
    protocol: str | None, path: str, headers: Mapping[str, str], body: Any
) -> tuple[str | None, list[dict[str, Any]]]:
    """Return the api key and the events of a capture request."""
    if protocol is None:
        raise _BadRequest(404, f"no capture endpoint at {path}")
    if protocol == "v1":
        scheme, _, token = headers.get("authorization", "").partition(" ")
        api_key = token if scheme.lower() == "bearer" and token else None
    else:
        api_key = body.get("api_key") if isinstance(body, dict) else None
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise _BadRequest(400, "the body has no batch of events")
    return api_key, batch


def _success_reply(protocol: str | None, events: list[dict[str, Any]]) -> Any:
    if protocol == "v1":
        # Per-event verdicts keyed by uuid (capture_v1.py, _parse_v1_response).
        return {"results": {e.get("uuid"): {"result": "ok"} for e in events}}
    return {"status": 1}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler never blocks interpreter exit
    receiver: PosthogReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a stalled request closed its end: not a bug.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stopped receiver cannot go on
    # serving a client through a pooled keep-alive connection.
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        receiver = self.server.receiver
        receiver._arrive()
        status, reply = receiver._answer(self.command, self.path, headers, raw)
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output free of access logs."""


def as_legacy(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return *event* in the ``/batch/`` (v0) shape, whichever protocol carried it.

    A v1 event's ``options`` go back into ``properties`` under their ``$`` names,
    and ``session_id``/``window_id`` become ``$session_id``/``$window_id``.
    ``$lib`` stays absent: v1 sends it in the ``PostHog-Sdk-Info`` header. A v0
    event comes back as a shallow copy.
    """
    legacy = dict(event)
    if "options" not in legacy:
        return legacy
    properties = dict(legacy.get("properties") or {})
    for option, value in (legacy.pop("options") or {}).items():
        properties[_V1_OPTIONS.get(option, option)] = value
    for field, prop in _V1_TOP_LEVEL.items():
        if field in legacy:
            properties[prop] = legacy.pop(field)
    legacy["properties"] = properties
    return legacy


class ErrorRecorder:
    """An ``on_error(exc, batch)`` callback that records each call; thread-safe.

    The client calls it on its consumer thread once an upload has failed for
    good (retries exhausted, or a status it does not retry).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: list[tuple[Exception, list[dict[str, Any]]]] = []

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self._cond:
            self._calls.append((error, list(batch)))
            self._cond.notify_all()

    @property
    def calls(self) -> list[tuple[Exception, list[dict[str, Any]]]]:
        """A copy of the ``(exception, batch)`` pairs received so far."""
        with self._cond:
            return list(self._calls)

    def wait_for(
        self, count: int = 1, timeout: float = 5.0
    ) -> list[tuple[Exception, list[dict[str, Any]]]]:
        """Wait until at least *count* calls arrived and return them all.

        Raises:
            AssertionError: fewer arrived within *timeout* seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._calls) >= count, timeout):
                raise AssertionError(
                    f"expected {count} on_error call(s) within {timeout}s, got {len(self._calls)}"
                )
            return list(self._calls)


def make_client(
    receiver: PosthogReceiver,
    *,
    api_key: str = TEST_API_KEY,
    gzip: bool = False,
    capture_mode: str = "v0",
    **options: Any,
) -> Posthog:
    """Build a real ``posthog.Posthog`` that sends to *receiver*.

    Test defaults: batches of up to 10 events sent within 50 ms; no retries, so
    a failed upload reaches ``on_error`` at once, with no backoff sleep; a 5 s
    request timeout; no GeoIP, no exception autocapture, no flag polling. The
    protocol and compression are passed explicitly, so ``POSTHOG_CAPTURE_MODE``
    and ``POSTHOG_CAPTURE_COMPRESSION`` change nothing. *gzip* compresses either
    protocol's bodies; ``capture_mode="v1"`` selects ``/i/v1/analytics/events``.
    Other keywords (``on_error``, ``sync_mode``, ``max_retries``,
    ``capture_compression`` ...) override a default. The caller owns the client
    and must ``shutdown()`` it; `posthog_client` does that.
    """
    from posthog import Posthog

    settings: dict[str, Any] = {
        "host": receiver.url,
        "flush_at": 10,
        "flush_interval": 0.05,
        "max_retries": 0,
        "timeout": 5,
        "thread": 1,
        "gzip": gzip,
        "capture_mode": capture_mode,
        "capture_compression": "gzip" if gzip else "none",
        "disable_geoip": True,
        "enable_exception_autocapture": False,
        "enable_local_evaluation": False,
    }
    settings.update(options)
    return Posthog(api_key, **settings)


@contextmanager
def posthog_client(receiver: PosthogReceiver, **options: Any) -> Iterator[Posthog]:
    """Yield ``make_client(receiver, **options)``; shut the client down after."""
    client = make_client(receiver, **options)
    try:
        yield client
    finally:
        client.shutdown()
