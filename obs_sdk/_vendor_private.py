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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from opentelemetry import context as otel_context

__all__ = ["CHECKED_AGAINST", "SUPPRESS_INSTRUMENTATION_KEY", "fast_context_getter"]

# Distribution -> the major version whose private names above were read (and tested).
CHECKED_AGAINST = {"opentelemetry-api": 1}

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
