"""The private parts of our dependencies that have no public equivalent: all of them, here.

Everything else uses each library's public API. What remains here was checked against the
versions in ``CHECKED_AGAINST`` (tests/unit/test_vendor_private.py fails when a newer major
version is installed, so it is looked at again), and each use degrades to the public way
when the private one is gone.

- OpenTelemetry's runtime context (``_RUNTIME_CONTEXT._current_context``): the hot path
  reads the current Context once per call; ``opentelemetry.context.get_current()`` is two
  Python calls deep (~100 ns), the runtime's ContextVar one ``get()`` (a budget of tens of
  ns per call, see docs/performance.md). Used only when it returns the very object
  ``get_current()`` does; otherwise ``get_current`` itself.
- OpenTelemetry's suppression key (``opentelemetry.context._SUPPRESS_INSTRUMENTATION_KEY``):
  the key instrumentations check to stay quiet. The public helpers
  (``opentelemetry.instrumentation.utils.suppress_instrumentation``) live in a package
  obs_sdk does not depend on; they set this same key.
- OpenTelemetry's Logs API (``opentelemetry._logs``): where the API is published while it
  is in development upstream; there is no other module. Imported only by the OTel log sink.
- SQLAlchemy's instrumentation attributes (``_sa_class_manager`` on a mapped class,
  ``_sa_instance_state`` on an instance): templates read ORM attributes on the hot path and
  must tell a mapped instance, and whether it is persistent, without importing SQLAlchemy
  or paying ``sqlalchemy.inspect()`` (microseconds) per call.
- posthog's log messages (``error uploading``, ``flush ran out of budget``): its client
  reports a failed upload only by logging it (``on_error`` is the app's own callback), so
  the PostHog sink's log filter recognises those two messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context

__all__ = [
    "CHECKED_AGAINST",
    "POSTHOG_FLUSH_BUDGET",
    "POSTHOG_UPLOAD_ERROR",
    "SA_CLASS_MANAGER",
    "SA_INSTANCE_STATE",
    "SUPPRESS_INSTRUMENTATION_KEY",
    "fast_context_getter",
    "otel_logs_api",
]

# Distribution -> the major version whose private names below were read (and tested).
CHECKED_AGAINST = {"opentelemetry-api": 1, "sqlalchemy": 2, "posthog": 7}

SA_CLASS_MANAGER = "_sa_class_manager"  # sqlalchemy.orm.base.DEFAULT_MANAGER_ATTR
SA_INSTANCE_STATE = "_sa_instance_state"  # sqlalchemy.orm.base.DEFAULT_STATE_ATTR

POSTHOG_UPLOAD_ERROR = "error uploading"  # posthog.consumer.Consumer.upload
POSTHOG_FLUSH_BUDGET = "flush ran out of budget"  # posthog.client.Client.flush

# Absent in some future version: fall back to the key's value, which instrumentations
# also check as a plain string (opentelemetry-instrumentation's utils).
SUPPRESS_INSTRUMENTATION_KEY: str = getattr(
    otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation"
)


def fast_context_getter() -> Callable[[], Mapping[str, object]]:
    """A callable returning the current OTel Context: the runtime's ContextVar.get if it is one."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    getter = getattr(var, "get", None)
    if callable(getter) and getter() is otel_context.get_current():
        return getter  # type: ignore[no-any-return]
    return otel_context.get_current


def otel_logs_api() -> Any:
    """OpenTelemetry's Logs API module (``opentelemetry._logs``): LoggerProvider, get_logger..."""
    from opentelemetry import _logs

    return _logs
