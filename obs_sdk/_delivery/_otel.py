"""Mirror audit records and analytics events as OpenTelemetry log records.

Imported only when ``configure(otel_logs=...)`` is given. It needs only the OpenTelemetry
*API* (``opentelemetry._logs``): the app brings the SDK ``LoggerProvider`` and its
exporters (the ``otel`` extra). Runs on the dispatcher thread, which has no current span,
so each log record gets the trace and span ids captured at the call as its context.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from obs_sdk._delivery._redact import to_json
from obs_sdk._hotpath._records import (
    AUDIT,
    EVENT,
    FAILURE,
    GROUP,
    STORED_AUDIT,
    AnalyticsEvent,
    AuditRecord,
)
from obs_sdk._vendor_private import otel_logs_api
from obs_sdk.exceptions import ConfigurationError

__all__ = ["OtelLogSink"]

otel_logs = otel_logs_api()  # opentelemetry._logs: see _vendor_private

LOGGER_NAME = "obs_sdk"
PREFIX = "obs."
# The SDK's default limit is 128 attributes per log record, and dropping any raises a
# warning; past this many flattened metadata keys the mapping goes as one JSON string.
MAX_FLATTENED_KEYS = 96
_INT64 = (-(2**63), 2**63 - 1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

_AUDIT_FIELDS = (
    "outcome",
    "actor_type",
    "actor_id",
    "actor_name",
    "actor_email",
    "resource_type",
    "resource_id",
    "resource_name",
    "workspace_id",
    "organization_id",
    "ip",
    "user_agent",
    "request_id",
    "service",
    "error_type",
)


def _primitive(value: Any) -> Any:
    """Return *value* as an OTel attribute value (str, bool, int, float), or None."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        # OTLP carries int64; a bigger int would fail the whole export.
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    """Yield dotted attribute names and values for a (redacted) metadata mapping."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}", item)
        return
    if isinstance(value, (list, tuple)):
        items = [_primitive(v) for v in value]
        kinds = {type(v) for v in items}
        if (
            len(kinds) == 1
            and None not in items
            and not any(isinstance(v, (dict, list, tuple)) for v in value)
        ):
            yield prefix, tuple(items)  # a homogeneous array is a valid attribute
        else:
            yield prefix, to_json(value)
        return
    converted = _primitive(value)
    if converted is not None:
        yield prefix, converted


def _mapping_attributes(prefix: str, data: dict[str, Any]) -> dict[str, Any]:
    flat = dict(_flatten(prefix, data))
    if len(flat) > MAX_FLATTENED_KEYS:
        return {prefix: to_json(data)}
    return flat


def _time_ns(moment: datetime.datetime) -> int:
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def _context(trace_id: str | None, span_id: str | None) -> Context | None:
    """Return a context whose current span carries the ids captured at the call."""
    if not trace_id or not span_id:
        return None
    span_context = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=False,
        # The record keeps no sampling flag; the ids are what correlates logs with traces.
        trace_flags=TraceFlags(TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), Context())


def _audit_log(record: AuditRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {"obs.kind": AUDIT, "obs.id": str(record.id)}
    attributes["obs.action"] = record.action
    for name in _AUDIT_FIELDS:
        value = getattr(record, name)
        if value is not None:
            attributes[PREFIX + name] = value
    attributes.update(_mapping_attributes("obs.metadata", record.metadata))
    if record.changes is not None:
        # One JSON string: rows of fields would flatten past the attribute limit, and their
        # [old, new] pairs are no attribute value.
        attributes["obs.changes"] = to_json(record.changes)
    who = f"{record.actor_type} {record.actor_id}" if record.actor_id else record.actor_type
    what = f" on {record.resource_type} {record.resource_id}" if record.resource_type else ""
    failed = record.outcome == FAILURE
    return {
        "timestamp": _time_ns(record.occurred_at),
        "context": _context(record.trace_id, record.span_id),
        "severity_number": otel_logs.SeverityNumber.WARN
        if failed
        else otel_logs.SeverityNumber.INFO,
        "severity_text": "WARN" if failed else "INFO",
        "body": f"audit {record.action} {record.outcome} by {who}{what}",
        "attributes": attributes,
        "event_name": record.action,
    }


def _event_log(event: AnalyticsEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {"obs.kind": event.kind, "obs.id": str(event.uuid)}
    attributes["obs.event"] = event.event
    if event.kind == EVENT:
        attributes["obs.outcome"] = event.outcome
    if event.distinct_id is not None:
        attributes["obs.distinct_id"] = event.distinct_id
    for group_type, group_key in event.groups.items():
        attributes[f"obs.groups.{group_type}"] = group_key
    attributes.update(_mapping_attributes("obs.properties", event.properties))
    if event.kind == GROUP:
        ((group_type, group_key),) = event.groups.items()
        body = f"group {group_type} {group_key} identified"
    else:
        body = f"event {event.event} by {event.distinct_id or 'anonymous'}"
    return {
        "timestamp": _time_ns(event.timestamp),
        "context": _context(event.trace_id, event.span_id),
        "severity_number": otel_logs.SeverityNumber.INFO,
        "severity_text": "INFO",
        "body": body,
        "attributes": attributes,
        "event_name": event.event,
    }


class OtelLogSink:
    """Emit each audit record and analytics event as an OpenTelemetry log record.

    ``event_name`` is the action or event name, attributes are the record's fields
    (``obs.action``, ``obs.actor_id``, ... with metadata and properties flattened as
    ``obs.metadata.<key>`` / ``obs.properties.<key>``, already redacted; a record's
    ``changes`` as the JSON string ``obs.changes``), and the log
    record's trace context is the span current at the call. The provider belongs to the
    app: ``flush`` and ``shutdown`` force-flush it, never shut it down.
    Called only from the dispatcher thread.
    """

    name = "otel_logs"
    kinds = frozenset({AUDIT, STORED_AUDIT, EVENT, GROUP})

    def __init__(self, provider: Any) -> None:
        if provider is True:
            self._provider: Any = None  # the global one, looked up when used
        elif isinstance(provider, otel_logs.LoggerProvider):
            self._provider = provider
        else:
            raise ConfigurationError(
                "configure(otel_logs=...) takes an OpenTelemetry LoggerProvider (e.g. "
                "opentelemetry.sdk._logs.LoggerProvider()) or True for the global one; "
                f"None turns it off; got {provider!r}"
            )
        self._logger: Any = None

    def _current_provider(self) -> Any:
        return self._provider if self._provider is not None else otel_logs.get_logger_provider()

    def _get_logger(self) -> Any:
        if self._logger is None:
            if self._provider is None:
                # A ProxyLogger: it follows a global provider that is set later.
                self._logger = otel_logs.get_logger(LOGGER_NAME)
            else:
                self._logger = self._provider.get_logger(LOGGER_NAME)
        return self._logger

    def export(self, batch: Sequence[AuditRecord | AnalyticsEvent], /) -> None:
        """Emit one log record per record (the provider's processors export them)."""
        logger = self._get_logger()
        for record in batch:
            fields = _audit_log(record) if isinstance(record, AuditRecord) else _event_log(record)
            logger.emit(**fields)

    def is_transient(self, error: Exception, /) -> bool:
        """Say no: emitting only hands over; the provider's exporters retry on their own."""
        return False

    def flush(self, timeout: float, /) -> None:
        """Force-flush the provider so exporters have sent everything handed over."""
        force_flush = getattr(self._current_provider(), "force_flush", None)
        if callable(force_flush):  # the API's no-op and proxy providers have none
            force_flush(timeout_millis=max(1, int(timeout * 1000)))

    def shutdown(self, timeout: float, /) -> None:
        """Flush only: the provider is the app's to shut down."""
        self.flush(timeout)

    def after_fork(self) -> None:
        """Do nothing: the SDK's provider re-creates its own state after fork."""
        return None
