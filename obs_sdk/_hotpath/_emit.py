"""The hot path: turn one finished call into a raw record and route it.

Reads the scope, resolves the fields templates need, builds a tuple of plain values and
either holds it for the scope's transaction or appends it to the queue. Everything else
(ids, formatting, JSON, redaction, I/O) happens later, off the caller's thread.

Written flat on purpose: on this path each Python-level call costs ~50-100 ns and each
attribute lookup ~10-20 ns, against a budget of twice a bare ContextVar + deque closure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from obs_sdk._delivery._dispatch import BATCH_SIZE, dispatcher
from obs_sdk._guard import count_error
from obs_sdk._hotpath._plain import Args, Kwargs, Raised
from obs_sdk._hotpath._records import (
    EVENT,
    GROUP,
    SUCCESS,
    Instrumentation,
    RawRecord,
    analytics_identity,
)
from obs_sdk._hotpath._runtime import runtime
from obs_sdk._ledger._tx import hold
from obs_sdk._scope._context import SCOPE_KEY, SUPPRESS_KEY, Frame, current_context, provided_fields
from obs_sdk._scope._values import EMPTY_SCOPE

__all__ = ["emit"]

_NO_FIELDS = (None, None, None, None, None, None)
# What the lane reads when no scope is open: plain, nobody identified, no fields. Never put in
# a context. Suppression always opens a frame, so a context without one is never suppressed.
_NO_FRAME = Frame(EMPTY_SCOPE)
_WAKE_AT = BATCH_SIZE - 1  # queue length before the append that fills a batch
_USER_TYPES = ("user", "service")
_ANALYTICS_KINDS = (EVENT, GROUP)


def emit(
    spec: Instrumentation,
    outcome: str,
    args: Args,
    kwargs: Kwargs,
    result: Any,
    exception: Raised,
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
        # The intake is full (overflow="drop"): drop before making the record, unless it would
        # be held by a session, consume an idempotency key, or not be recorded at all.
        if (
            len(dispatcher.queue) >= dispatcher.drop_at
            and deliver is None
            and (frame is None or frame.plain)  # type: ignore[attr-defined]
            and spec.kind not in _ANALYTICS_KINDS
            and spec.emit_if is None
        ):
            dispatcher.count_drop()
            return
        if spec.plain and runtime.provider is None:
            values: tuple[Any, ...] = ()
        else:
            prepared = _prepare(spec, fields, args, kwargs, result, exception)
            if prepared is None:
                return
            fields, values = prepared
        idempotency = None
        if frame is not None and frame.idempotency is not None:  # type: ignore[attr-defined]
            idempotency = frame.idempotency.next(spec)  # type: ignore[attr-defined]
        clock = runtime.clock  # not runtime.clock(): see _lane's _LANE
        raw = (
            spec,
            outcome,
            clock(),
            fields,
            ctx,  # its span's ids are read at render
            values,
            type(exception).__name__ if exception is not None else None,
            idempotency,
        )
        if deliver is not None:
            deliver(raw)
            return
        if frame is not None and frame.session is not None and outcome == SUCCESS:  # type: ignore[attr-defined]
            # Children on other tasks and threads join the scope's transaction too.
            hold(frame.session, frame.unit, raw)  # type: ignore[attr-defined]
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
        count_error("emit", exc, spec.plan.owner)


def _prepare(
    spec: Instrumentation,
    fields: tuple[Any, ...],
    args: Args,
    kwargs: Kwargs,
    result: Any,
    exception: Raised,
) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """The less common steps: provider fields, analytics identity, emit_if, templates.

    Returns (fields, values), or None when nothing is recorded.
    """
    if runtime.provider is not None:
        try:
            fields = provided_fields(fields)
        except Exception as exc:  # a broken provider costs its fields, not the record
            count_error("scope_provider", exc)
    if spec.kind in _ANALYTICS_KINDS:
        if not (runtime.events_wanted or dispatcher.capture is not None):
            _unsent(spec.name, no_client=True)  # no sink takes them: counted, said once
            return None
        actor = fields[0]
        # Users and services always send; only the others need the rule (and its opt-ins).
        if (actor is None or actor.type not in _USER_TYPES) and not analytics_identity(spec, actor)[
            0
        ]:
            if actor is None:  # nobody in scope at all: counted, said once (an explicit
                _unsent(spec.name, no_client=False)  # anonymous or system actor is a choice)
            return None  # anonymous or system caller without the opt-in: nothing is sent
    if spec.emit_if is not None and not _wanted(spec, args, kwargs, result, exception):
        return None
    plan = spec.plan
    values = spec.resolving.resolve(args, kwargs, result, exception) if plan.resolvers else ()
    return fields, values


def _unsent(event: str, *, no_client: bool) -> None:
    """Count an analytics event that is not sent, and say why once (``_analytics.not_sent``)."""
    from obs_sdk._hotpath import _analytics  # it imports this module

    _analytics.not_sent(event, _analytics.NO_CLIENT if no_client else _analytics.NO_ACTOR)


def _wanted(
    spec: Instrumentation,
    args: Args,
    kwargs: Kwargs,
    result: Any,
    exception: Raised,
) -> bool:
    """Run ``emit_if``; if it raises, keep the record (a trail errs toward recording)."""
    try:
        return bool(spec.emit_if(spec.resolving.call(args, kwargs, result, exception)))  # type: ignore[misc]
    except Exception as exc:
        count_error("emit_if", exc, f"{spec.plan.owner}: emit_if")
        return True
