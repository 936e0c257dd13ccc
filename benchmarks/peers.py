"""The tools users would pick instead: OpenTelemetry, a direct PostHog capture, logfire, sentry.

Each is set up the way its documentation suggests, recording the same trivial ``f(x)``, with
its background work (span processors, upload threads) running and flushed between blocks,
outside the timed region. Nothing leaves the machine: PostHog uploads go to a loopback server
that discards them, span exporters discard, sentry's transport discards.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from benchmarks.contenders import af, f
from benchmarks.harness import Entry


@dataclass
class Missing:
    """A contender that could not run here, and why."""

    label: str
    reason: str


class _DiscardHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        body = b'{"status": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class DiscardServer:
    """An HTTP server on 127.0.0.1 that answers every POST with 200 and keeps nothing."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DiscardHandler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="bench-discard", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def posthog_client(host: str) -> Any:
    """A real ``posthog.Posthog`` client whose uploads reach the discarding loopback server."""
    import posthog

    import obs_sdk as obs

    return posthog.Posthog("phc_benchmark", host=host, on_error=obs.posthog_on_error, max_retries=0)


def posthog_entries(client: Any) -> list[Entry]:
    """``posthog.capture()`` called directly after ``f``, its consumer thread running."""

    def captured(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(x: Any) -> Any:
            result = func(x)
            client.capture("f_called", distinct_id="u_1", properties={"x": x})
            return result

        return wrapper

    return [
        Entry(
            "posthog",
            "posthog capture() direct",
            captured(f),
            "peer",
            "event, distinct_id, uuid4, ISO timestamp, properties incl. $lib, $os, $python_version "
            "(distro.info() per call); JSON-encoded and uploaded by its consumer thread",
            between=client.flush,
        )
    ]


def otel_entries() -> list[Entry]:
    """An OpenTelemetry SDK ``start_as_current_span`` decorator with a BatchSpanProcessor."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DiscardExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()  # not the global one: nothing else in the run sees spans
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    tracer = provider.get_tracer("benchmarks")
    records = (
        "one span: name, kind, trace and span ids, start/end ns, resource; no arguments, no actor; "
        "exported in batches by the processor's thread"
    )
    flush = provider.force_flush
    return [
        Entry(
            "otel",
            "OpenTelemetry SDK span decorator (BatchSpanProcessor)",
            tracer.start_as_current_span("f")(f),
            "peer",
            records,
            between=flush,
        ),
        Entry(
            "a-otel",
            "async: OpenTelemetry SDK span decorator",
            tracer.start_as_current_span("af")(af),
            "peer",
            records,
            is_async=True,
            between=flush,
        ),
    ]


def logfire_entries() -> list[Entry] | Missing:
    """``@logfire.instrument()`` with logfire's defaults, sending nothing and printing nothing."""
    label = "logfire @instrument()"
    if importlib.util.find_spec("logfire") is None:
        return Missing(label, "logfire is not installed (dependency group bench)")
    import logfire

    logfire.configure(send_to_logfire=False, console=False, service_name="benchmarks")
    return [
        Entry(
            "logfire",
            label,
            logfire.instrument()(f),
            "peer",
            "one span 'Calling f' with code.* attributes, message template, every argument value "
            "(JSON + JSON schema), scrubbed; no exporter configured, so dropped at the end",
            between=logfire.force_flush,
        )
    ]


def sentry_entries() -> list[Entry] | Missing:
    """``@sentry_sdk.trace`` inside a transaction, with a transport that discards."""
    label = "sentry @trace (in a transaction)"
    if importlib.util.find_spec("sentry_sdk") is None:
        return Missing(label, "sentry-sdk is not installed (dependency group bench)")
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class DiscardTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            return None

    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",
        traces_sample_rate=1.0,
        transport=DiscardTransport,
        # The default integrations patch threading, logging and SQLAlchemy process-wide: they
        # would change every other row. This row measures the decorator.
        default_integrations=False,
        auto_enabling_integrations=False,
    )

    @contextmanager
    def transaction() -> Iterator[None]:
        with sentry_sdk.start_transaction(name="benchmark", op="bench"):
            yield

    return [
        Entry(
            "sentry",
            label,
            sentry_sdk.trace(f),
            "peer",
            "one child span: op 'function', description, uuid4 span id, datetime timestamps, "
            "thread id/name; sent with its transaction",
            context=transaction,
        )
    ]
