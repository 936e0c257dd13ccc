"""The hot path: turn one finished call into a raw record and route it.

Reads the scope, resolves the fields templates need, builds a tuple of plain values and
either holds it for the scope's transaction or appends it to the queue. Everything else
(ids, formatting, JSON, redaction, I/O) happens later, off the caller's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from time import time_ns
from typing import Any

from obs_sdk import _context
from obs_sdk._context import SCOPE_KEY, SPAN_KEY, SUPPRESS_KEY, current_context, owner_token
from obs_sdk._dispatch import dispatcher
from obs_sdk._guard import count_error
from obs_sdk._records import AUDIT, SUCCESS, Instrumentation, RawRecord, analytics_identity
from obs_sdk._tx import hold

__all__ = ["emit"]

_NO_FIELDS = (None, None, None, None, None, None)
_submit = dispatcher.submit

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
    Written flat on purpose: each Python-level call costs ~50 ns on the caller's thread.
    """
    try:
        ctx = current_context()
        if ctx.get(SUPPRESS_KEY):
            return
        frame = ctx.get(SCOPE_KEY)
        fields = frame.fields if frame is not None else _NO_FIELDS  # type: ignore[attr-defined]
        if _context.provider is not None:
            try:
                fields = _context.provided_fields(fields)
            except Exception as exc:  # a broken provider costs its fields, not the record
                count_error("scope_provider", exc)
        if spec.kind != AUDIT:
            if not (events_wanted or dispatcher.capture is not None):
                return
            if not analytics_identity(spec, fields[0])[0]:
                return  # anonymous or system caller without the opt-in: nothing is sent
        if spec.emit_if is not None and not _wanted(spec, args, kwargs, result, exception):
            return
        plan = spec.plan
        values = plan.resolve(args, kwargs, result, exception) if plan.resolvers else ()
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
        elif (
            frame is not None
            and frame.session is not None  # type: ignore[attr-defined]
            and outcome == SUCCESS
            and frame.owner == owner_token()  # type: ignore[attr-defined]
        ):
            hold(frame.session, raw)  # type: ignore[attr-defined]
        else:
            _submit(raw)
    except Exception as exc:
        count_error("emit", exc)


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
