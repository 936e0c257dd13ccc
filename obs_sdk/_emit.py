"""The hot path: turn one finished call into a raw record and route it.

Reads the scope, resolves the fields templates need, builds a tuple of plain values and
either holds it for the scope's transaction or appends it to the queue. Everything else
(ids, formatting, JSON, redaction, I/O) happens later, off the caller's thread.

Written flat on purpose: on this path each Python-level call costs ~50-100 ns and each
attribute lookup ~10-20 ns, against a budget of twice a bare ContextVar + deque closure.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from time import time_ns
from typing import Any

from obs_sdk import _context
from obs_sdk._context import SCOPE_KEY, SPAN_KEY, SUPPRESS_KEY, current_context, owner_token
from obs_sdk._dispatch import BATCH_SIZE, dispatcher
from obs_sdk._guard import count_error
from obs_sdk._records import (
    EVENT,
    GROUP,
    SUCCESS,
    Instrumentation,
    RawRecord,
    analytics_identity,
)
from obs_sdk._tx import hold

__all__ = ["emit"]

_NO_FIELDS = (None, None, None, None, None, None)
_WAKE_AT = BATCH_SIZE - 1  # queue length before the append that fills a batch
_USER_TYPES = ("user", "service")
_ANALYTICS_KINDS = (EVENT, GROUP)

# Set by configure(): the clock records are stamped with (tests pass a stepping one).
clock: Callable[[], int] = time_ns

# Set by configure(): False when no sink takes analytics events (no PostHog, no OTel logs).
events_wanted = True


def emit(
    spec: Instrumentation,
    outcome: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    exception: BaseException | None,
    deliver: Callable[[RawRecord], Any] | None = None,
) -> None:
    """Record one call: hold it for the scope's transaction, or queue it. Never raises.

    *deliver* receives the raw record instead (record_audit_now writes it at once).
    """
    try:
        ctx = current_context()
        frame = ctx.get(SCOPE_KEY)
        if frame is None:
            if ctx.get(SUPPRESS_KEY):
                return
            fields = _NO_FIELDS
        else:
            if frame.suppressed:  # type: ignore[attr-defined]
                return
            fields = frame.fields  # type: ignore[attr-defined]
        if spec.plain and _context.provider is None:
            values: tuple[Any, ...] = ()
        else:
            prepared = _prepare(spec, fields, args, kwargs, result, exception)
            if prepared is None:
                return
            fields, values = prepared
        span = ctx.get(SPAN_KEY)
        trace = None
        if span is not None:
            sc = span.get_span_context()  # type: ignore[attr-defined]
            if sc.is_valid:
                trace = (sc.trace_id, sc.span_id)
        idempotency = None
        if frame is not None and frame.idempotency is not None:  # type: ignore[attr-defined]
            idempotency = frame.idempotency.next(spec)  # type: ignore[attr-defined]
        raw = (
            spec,
            outcome,
            clock(),
            fields,
            trace,
            values,
            type(exception).__name__ if exception is not None else None,
            idempotency,
        )
        if deliver is not None:
            deliver(raw)
            return
        if (
            frame is not None
            and frame.session is not None  # type: ignore[attr-defined]
            and outcome == SUCCESS
            and frame.owner == owner_token()  # type: ignore[attr-defined]
        ):
            hold(frame.session, raw)  # type: ignore[attr-defined]
            return
        queue = dispatcher.queue  # dispatcher.submit(), inlined for the common case
        n = len(queue)
        if n < dispatcher.lane_limit:
            queue.append(raw)
            if n == _WAKE_AT:
                dispatcher.wake()
            return
        dispatcher.submit(raw)  # full queue, capture, or no worker yet
    except Exception as exc:
        count_error("emit", exc)


# The fast lane of record_on_success, compiled per decorated function so that its template
# fields are inlined (no per-field calls). Module globals (clock, dispatcher) are read live;
# the plan's constants arrive as parameters of make(). The dispatcher's lane flag is off
# while a scope provider, a capture or a missing worker needs the full path.
_LANE = """
def make(func, spec, plan, queue, {constants}):
    def recorded_call(*a, **k):
        r = func(*a, **k)
        try:
            ctx = current_context()
            frame = ctx.get(SCOPE_KEY)
            if frame is not None and frame.plain{identified}:
                n = len(queue)
                if n < dispatcher.{lane}:
                    try:
                        values = {values}
                    except Exception:  # the careful loop nulls and counts the failing field
                        values = plan.resolve(a, k, r, None)
                    span = ctx.get(SPAN_KEY)
                    trace = None
                    if span is not None:
                        sc = span.get_span_context()
                        if sc.is_valid:
                            trace = (sc.trace_id, sc.span_id)
                    queue.append((spec, SUCCESS, clock(), frame.fields, trace, values, None, None))
                    if n == _WAKE_AT:
                        dispatcher.wake()
                    return r
        except Exception as exc:
            count_error("emit", exc)
            return r
        emit(spec, SUCCESS, a, k, r, None)
        return r
    return recorded_call
"""


def record_on_success(func: Callable[..., Any], spec: Instrumentation) -> Callable[..., Any] | None:
    """Return the wrapper for the commonest case: a sync function recorded on success.

    It appends the record itself when nothing unusual is in effect (a scope without a
    session or idempotency key, no provider, the worker running, and for analytics a
    signed-in actor) and hands every other case to ``emit()``, which handles them all. The
    template fields are compiled into it, so a call costs about half of what ``emit()``
    does. None for plans with callable fields: they need the Call, so ``emit()`` for all.
    """
    compiled = spec.plan.values_source()
    if compiled is None:
        return None
    values, namespace = compiled
    namespace["x"] = None  # no exception on this path: {result...} fields are read
    is_event = spec.kind == EVENT
    source = _LANE.format(
        constants=", ".join(namespace),
        values=values,
        # Analytics take the lane only for a signed-in actor (others need their opt-ins).
        identified=" and frame.identified" if is_event else "",
        lane="events_lane_limit" if is_event else "lane_limit",
    )
    filename = f"<obs_sdk wrapper of {getattr(func, '__qualname__', 'a function')}>"
    # In linecache, so a traceback through the wrapper shows its source like any module's.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), globals(), scope)
    make = scope["make"]
    return make(func, spec, spec.plan, dispatcher.queue, *namespace.values())  # type: ignore[no-any-return]


def _prepare(
    spec: Instrumentation,
    fields: tuple[Any, ...],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    exception: BaseException | None,
) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """The less common steps: provider fields, analytics identity, emit_if, templates.

    Returns (fields, values), or None when nothing is recorded.
    """
    if _context.provider is not None:
        try:
            fields = _context.provided_fields(fields)
        except Exception as exc:  # a broken provider costs its fields, not the record
            count_error("scope_provider", exc)
    if spec.kind in _ANALYTICS_KINDS:
        if not (events_wanted or dispatcher.capture is not None):
            return None
        actor = fields[0]
        # Users and services always send; only the others need the rule (and its opt-ins).
        if (actor is None or actor.type not in _USER_TYPES) and not analytics_identity(spec, actor)[
            0
        ]:
            return None  # anonymous or system caller without the opt-in: nothing is sent
    if spec.emit_if is not None and not _wanted(spec, args, kwargs, result, exception):
        return None
    plan = spec.plan
    values = plan.resolve(args, kwargs, result, exception) if plan.resolvers else ()
    return fields, values


def _wanted(
    spec: Instrumentation,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    exception: BaseException | None,
) -> bool:
    """Run ``emit_if``; if it raises, keep the record (a trail errs toward recording)."""
    try:
        return bool(spec.emit_if(spec.plan.call(args, kwargs, result, exception)))  # type: ignore[misc]
    except Exception as exc:
        count_error("emit_if", exc)
        return True
