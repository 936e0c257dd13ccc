"""The hot path: turn one finished call into a raw record and route it.

Reads the scope, resolves the fields templates need, builds a tuple of plain values and
either holds it for the scope's transaction or appends it to the queue. Everything else
(ids, formatting, JSON, redaction, I/O) happens later, off the caller's thread.
"""

from __future__ import annotations

from typing import Any

from obs_sdk import _context, _records
from obs_sdk._context import SCOPE_KEY, SPAN_KEY, SUPPRESS_KEY, current_context, owner_token
from obs_sdk._dispatch import dispatcher
from obs_sdk._guard import count_error
from obs_sdk._records import AUDIT, SUCCESS, Instrumentation, RawRecord, analytics_identity
from obs_sdk._tx import hold

__all__ = ["build", "emit"]

_NO_FIELDS = (None, None, None, None, None, None)
_submit = dispatcher.submit

# Set by configure(): False when no sink takes analytics events (no PostHog, no OTel logs).
events_wanted = True


def emit(
    spec: Instrumentation,
    outcome: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    exception: BaseException | None,
) -> None:
    """Record one call of a decorated function: hold it for the transaction, or queue it."""
    try:
        ctx = current_context()
        if ctx.get(SUPPRESS_KEY):
            return
        frame = ctx.get(SCOPE_KEY)
        raw = build(ctx, frame, spec, outcome, args, kwargs, result, exception)
        if raw is None:
            return
        if (
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


def build(
    ctx: Any,
    frame: Any,
    spec: Instrumentation,
    outcome: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    exception: BaseException | None,
) -> RawRecord | None:
    """Build the raw record of one call on the caller's thread; None when nothing is recorded."""
    fields = frame.fields if frame is not None else _NO_FIELDS
    if _context.provider is not None:
        fields = _context.provided_fields(fields)
    if spec.kind != AUDIT:
        if not (events_wanted or dispatcher.capture is not None):
            return None
        if not analytics_identity(spec, fields[0])[0]:
            return None  # anonymous or system caller without the opt-in: nothing is sent
    if spec.emit_if is not None and not _wanted(spec, args, kwargs, result, exception):
        return None
    plan = spec.plan
    values = plan.resolve(args, kwargs, result, exception) if plan.resolvers else ()
    span = ctx.get(SPAN_KEY)
    trace = None
    if span is not None:
        sc = span.get_span_context()
        if sc.is_valid:
            trace = (sc.trace_id, sc.span_id)
    idempotency = None
    if frame is not None and frame.idempotency is not None:
        idempotency = frame.idempotency.next(spec)
    return (
        spec,
        outcome,
        _records.settings.clock(),
        fields,
        trace,
        values,
        type(exception).__name__ if exception is not None else None,
        idempotency,
    )


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
