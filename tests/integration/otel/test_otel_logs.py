"""configure(otel_logs=...): records mirrored as OpenTelemetry log records.

The real opentelemetry-sdk LoggerProvider and TracerProvider, its in-memory exporter, and
the OTLP/HTTP exporter posting protobuf to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine

import obs_sdk as obs

REPO_ROOT = Path(__file__).resolve().parents[3]
SECRET_VALUE = "tok_live_must_not_leak"


@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}"),
    metadata={"bytes": "{size}", "api_token": "{token}", "sizes": {"thumb": 12, "full": 4096}},
)
def download(file_id: str, size: int, token: str) -> None:
    """Leave one audit record carrying a secret-looking metadata key."""


@obs.audited("file.deleted", resource=obs.Resource("file", "{file_id}"), when="failure")
def delete(file_id: str) -> None:
    """Fail, leaving a failure record."""
    raise PermissionError(file_id)


@pytest.fixture
def memory() -> Iterator[tuple[LoggerProvider, InMemoryLogRecordExporter]]:
    """An app-owned LoggerProvider exporting synchronously to memory."""
    provider = LoggerProvider(shutdown_on_exit=False)
    exporter = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def by_name(logs: tuple[ReadableLogRecord, ...]) -> dict[str, Any]:
    """Index exported log records by event name."""
    return {log.log_record.event_name: log.log_record for log in logs}


ADA = obs.Actor.user("u_1", name="Ada", email="ada@example.com")


def audited_call_in_span() -> tuple[int, int]:
    """Make the audited call inside a real SDK span; return its trace and span ids."""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("download") as span:
        with obs.scope(actor=ADA, workspace="ws_1", organization="org_1", request_id="req_9"):
            download("f_1", 2048, SECRET_VALUE)
    context = span.get_span_context()
    return context.trace_id, context.span_id


class TestInMemoryExporter:
    """Records reach the SDK's InMemoryLogRecordExporter through the app's provider."""

    def test_audit_record_fields_redaction_and_trace(
        self, sqlite_url: str, memory: tuple[LoggerProvider, InMemoryLogRecordExporter]
    ) -> None:
        """event_name is the action; fields are attributes; the span's ids are the context."""
        provider, exporter = memory
        obs.configure(sqlite_url, otel_logs=provider, service="files-api")
        trace_id, span_id = audited_call_in_span()
        assert obs.flush()
        log = by_name(exporter.get_finished_logs())["file.downloaded"]
        attributes = dict(log.attributes)
        engine = create_engine(sqlite_url)
        (record,) = obs.audit_log(engine)
        engine.dispose()
        assert attributes == {
            "obs.kind": "audit",
            "obs.id": str(record.id),
            "obs.action": "file.downloaded",
            "obs.outcome": "success",
            "obs.actor_type": "user",
            "obs.actor_id": "u_1",
            "obs.actor_name": "Ada",
            "obs.actor_email": "ada@example.com",
            "obs.resource_type": "file",
            "obs.resource_id": "f_1",
            "obs.workspace_id": "ws_1",
            "obs.organization_id": "org_1",
            "obs.request_id": "req_9",
            "obs.service": "files-api",
            "obs.metadata.bytes": 2048,
            "obs.metadata.api_token": "[REDACTED]",
            "obs.metadata.sizes.thumb": 12,
            "obs.metadata.sizes.full": 4096,
        }
        assert (log.trace_id, log.span_id) == (trace_id, span_id)
        assert log.timestamp == int(record.occurred_at.timestamp() * 1_000_000) * 1000
        assert SECRET_VALUE not in repr(log.body) + repr(attributes)

    def test_records_stored_by_their_own_commit_are_mirrored_too(
        self, sqlite_url: str, memory: tuple[LoggerProvider, InMemoryLogRecordExporter]
    ) -> None:
        """Audits written at a transaction's commit and by record_audit_now reach OTel, same id."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import Session

        provider, exporter = memory
        engine = create_engine(sqlite_url)
        obs.configure(engine, otel_logs=provider)
        with Session(engine) as session, obs.scope(actor=ADA, session=session):
            session.execute(text("SELECT 1"))  # a transaction in progress: records join it
            download("f_tx", 1, "t")
            session.rollback()  # dropped: never stored, never mirrored
            download("f_committed", 1, "t")
            session.commit()
        obs.record_audit_now("credential.shown", resource=obs.Resource("api_key", "k_1"))
        assert obs.flush()
        mirrored = {
            (log.log_record.attributes["obs.resource_id"], log.log_record.attributes["obs.id"])
            for log in exporter.get_finished_logs()
        }
        stored = {(r.resource_id, str(r.id)) for r in obs.audit_log(engine)}
        assert mirrored == stored
        assert {resource for resource, _ in stored} == {"f_committed", "k_1"}

    def test_analytics_event_is_mirrored(
        self, sqlite_url: str, memory: tuple[LoggerProvider, InMemoryLogRecordExporter]
    ) -> None:
        """track() becomes a log record named for the event, properties redacted, groups kept."""
        provider, exporter = memory
        obs.configure(sqlite_url, otel_logs=provider)
        with obs.scope(actor=ADA, workspace="ws_1"):
            obs.track("file_shared", properties={"file_id": "f_1", "password": "hunter2"})
        obs.identify_group("workspace", "ws_1", {"plan": "team"})
        assert obs.flush()
        logs = by_name(exporter.get_finished_logs())
        event = dict(logs["file_shared"].attributes)
        assert {k: v for k, v in event.items() if k != "obs.id"} == {
            "obs.kind": "event",
            "obs.event": "file_shared",
            "obs.outcome": "success",
            "obs.distinct_id": "u_1",
            "obs.groups.workspace": "ws_1",
            "obs.properties.file_id": "f_1",
            "obs.properties.password": "[REDACTED]",
        }
        group = dict(logs["$groupidentify"].attributes)
        assert (group["obs.kind"], group["obs.properties.plan"]) == ("group", "team")

    def test_failure_is_a_warning_without_trace_outside_spans(
        self, sqlite_url: str, memory: tuple[LoggerProvider, InMemoryLogRecordExporter]
    ) -> None:
        """A failure record has WARN severity and its error type; no span means no trace id."""
        provider, exporter = memory
        obs.configure(sqlite_url, otel_logs=provider)
        with pytest.raises(PermissionError):
            delete("f_9")
        assert obs.flush()
        log = by_name(exporter.get_finished_logs())["file.deleted"]
        assert (log.severity_text, log.attributes["obs.error_type"]) == ("WARN", "PermissionError")
        assert (log.trace_id, log.span_id) == (0, 0)
        assert log.body == "audit file.deleted failure by anonymous on file f_9"

    def test_awkward_metadata_values_become_valid_attributes(
        self, sqlite_url: str, memory: tuple[LoggerProvider, InMemoryLogRecordExporter]
    ) -> None:
        """Huge ints, mixed lists and lists of dicts are encoded, never dropped or fatal."""
        provider, exporter = memory
        obs.configure(sqlite_url, otel_logs=provider)
        metadata = {"big": 2**70, "mixed": [1, "a"], "rows": [{"id": 1}], "tags": ["a", "b"]}
        obs.record_audit("report.exported", metadata=metadata)
        assert obs.flush()
        attributes = dict(by_name(exporter.get_finished_logs())["report.exported"].attributes)
        assert {k: v for k, v in attributes.items() if k.startswith("obs.metadata")} == {
            "obs.metadata.big": str(2**70),
            "obs.metadata.mixed": '[1,"a"]',
            "obs.metadata.rows": '[{"id":1}]',
            "obs.metadata.tags": ("a", "b"),
        }
        assert obs.stats()["by_sink"]["otel_logs"]["delivered"] == 1


class TestProviderOwnership:
    """The provider is the app's: obs_sdk flushes it and never shuts it down."""

    def test_flush_drains_a_batch_processor(self, sqlite_url: str) -> None:
        """obs.flush() force-flushes the provider: a slow batch processor has exported."""
        provider = LoggerProvider(shutdown_on_exit=False)
        exporter = InMemoryLogRecordExporter()
        provider.add_log_record_processor(
            BatchLogRecordProcessor(exporter, schedule_delay_millis=600_000)
        )
        obs.configure(sqlite_url, otel_logs=provider)
        obs.record_audit("report.exported")
        assert obs.flush()
        assert [log.log_record.event_name for log in exporter.get_finished_logs()] == [
            "report.exported"
        ]
        provider.shutdown()

    def test_shutdown_leaves_the_provider_running(
        self, sqlite_url: str, memory: tuple[LoggerProvider, InMemoryLogRecordExporter]
    ) -> None:
        """After obs.shutdown() the app still logs through its provider."""
        provider, exporter = memory
        obs.configure(sqlite_url, otel_logs=provider)
        assert obs.shutdown()
        provider.get_logger("app").emit(body="still here", event_name="app.log")
        assert [log.log_record.event_name for log in exporter.get_finished_logs()] == ["app.log"]

    @pytest.mark.parametrize("value", [False, "yes", object()])
    def test_otel_logs_takes_a_provider_or_true(self, sqlite_url: str, value: object) -> None:
        """Anything else is a ConfigurationError naming the fix."""
        with pytest.raises(obs.ConfigurationError, match="LoggerProvider"):
            obs.configure(sqlite_url, otel_logs=value)

    def test_true_uses_the_global_provider_set_later(self, tmp_path: Path) -> None:
        """otel_logs=True follows the global provider, even one set after configure()."""
        script = textwrap.dedent(
            f"""
            import json
            import obs_sdk as obs
            from opentelemetry._logs import set_logger_provider
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import (
                InMemoryLogRecordExporter, SimpleLogRecordProcessor)

            obs.configure("sqlite:///{tmp_path / "obs.db"}", otel_logs=True)
            provider = LoggerProvider()
            exporter = InMemoryLogRecordExporter()
            provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
            set_logger_provider(provider)
            obs.record_audit("report.exported", metadata={{"secret": "s3"}})
            assert obs.flush()
            print(json.dumps([
                [log.log_record.event_name, dict(log.log_record.attributes)]
                for log in exporter.get_finished_logs()
            ]))
            """
        )
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", script],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        ((name, attributes),) = json.loads(done.stdout)
        assert (name, attributes["obs.metadata.secret"]) == ("report.exported", "[REDACTED]")


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.receive(self.path, self.headers.get("Content-Type"), body)  # type: ignore[attr-defined]
        reply = ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class OtlpReceiver(ThreadingHTTPServer):
    """A loopback OTLP/HTTP logs endpoint that keeps every decoded request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.requests: list[tuple[str, str | None, ExportLogsServiceRequest]] = []
        self._lock = threading.Lock()

    def receive(self, path: str, content_type: str | None, body: bytes) -> None:
        with self._lock:
            self.requests.append((path, content_type, ExportLogsServiceRequest.FromString(body)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/logs"


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serve OtlpReceiver on a real socket for one test."""
    receiver = OtlpReceiver()
    serving = threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        serving.join()
        receiver.server_close()


def plain(value: AnyValue) -> Any:
    """Turn an OTLP AnyValue into a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(plain(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


class TestOtlpHttpExporter:
    """The OTLP/HTTP exporter posts the mirrored records as protobuf to a collector."""

    def test_records_arrive_at_a_loopback_collector(
        self, sqlite_url: str, otlp_receiver: OtlpReceiver
    ) -> None:
        """The collector decodes event name, audit fields, redacted secret and trace id."""
        provider = LoggerProvider(shutdown_on_exit=False)
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=otlp_receiver.url, timeout=10))
        )
        obs.configure(sqlite_url, otel_logs=provider, service="files-api")
        trace_id, span_id = audited_call_in_span()
        assert obs.flush()
        provider.shutdown()
        ((path, content_type, request),) = otlp_receiver.requests
        assert (path, content_type) == ("/v1/logs", "application/x-protobuf")
        (resource_logs,) = request.resource_logs
        (scope_logs,) = resource_logs.scope_logs
        (log,) = scope_logs.log_records
        attributes = {kv.key: plain(kv.value) for kv in log.attributes}
        assert scope_logs.scope.name == "obs_sdk"
        assert log.event_name == "file.downloaded"
        assert (log.trace_id.hex(), log.span_id.hex()) == (
            format(trace_id, "032x"),
            format(span_id, "016x"),
        )
        assert {k: attributes[k] for k in ("obs.actor_id", "obs.workspace_id", "obs.service")} == {
            "obs.actor_id": "u_1",
            "obs.workspace_id": "ws_1",
            "obs.service": "files-api",
        }
        assert attributes["obs.metadata.api_token"] == "[REDACTED]"
        assert attributes["obs.metadata.bytes"] == 2048
        assert SECRET_VALUE not in request.SerializeToString().decode("utf-8", "replace")


class TestImportCost:
    """The optional libraries load only when their feature is configured."""

    def test_import_obs_sdk_loads_no_optional_library(self) -> None:
        """import obs_sdk (and using propagation) pulls in no OTel SDK and no contextvars-extras."""
        script = textwrap.dedent(
            """
            import sys
            import obs_sdk
            obs_sdk.propagation.inject({})
            with obs_sdk.propagation.extract({"obs-workspace": "ws_1"}):
                pass
            optional = ("opentelemetry.sdk", "opentelemetry.exporter", "contextvars_extras",
                        "obs_sdk._delivery._otel", "obs_sdk.integrations.contextvars_extras")
            print(sorted(m for m in sys.modules if m.startswith(optional)))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.strip() == "[]"
