"""The hot path: turn one finished call into a raw record and route it.

Reads the scope, resolves the fields templates need, builds a tuple of plain values and
either holds it for the scope's transaction or appends it to the queue. Everything else
(ids, formatting, JSON, redaction, I/O) happens later, off the caller's thread.

Written flat on purpose: on this path each Python-level call costs ~50-100 ns and each
attribute lookup ~10-20 ns, against a budget of twice a bare ContextVar + deque closure.
"""

from __future__ import annotations

import dis
import inspect
import linecache
from collections.abc import Callable
from time import time_ns
from typing import Any

from obs_sdk import _context
from obs_sdk._context import SCOPE_KEY, SUPPRESS_KEY, Frame, current_context, owner_token
from obs_sdk._dispatch import BATCH_SIZE, dispatcher
from obs_sdk._guard import count_error
from obs_sdk._records import (
    AUDIT,
    EVENT,
    GROUP,
    SUCCESS,
    Instrumentation,
    RawRecord,
    analytics_identity,
)
from obs_sdk._scope import EMPTY_SCOPE
from obs_sdk._tx import hold

__all__ = ["emit"]

_NO_FIELDS = (None, None, None, None, None, None)
# What the lane reads when no scope is open: plain, nobody identified, no fields. Never put in
# a context (set_actor changes a context's frame in place). Suppression always opens a frame,
# so a context without one is never suppressed.
_NO_FRAME = Frame(EMPTY_SCOPE)
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
        idempotency = None
        if frame is not None and frame.idempotency is not None:  # type: ignore[attr-defined]
            idempotency = frame.idempotency.next(spec)  # type: ignore[attr-defined]
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


# The fast lane of record_on_success, compiled per decorated (sync or async) function so
# that its template fields are inlined (no per-field calls). Module globals (clock,
# dispatcher) are read live; the plan's constants arrive as parameters of make(). The
# dispatcher's lane flag is off while a scope provider, a capture or a missing worker needs
# the full path.
#
# When it can, the wrapper takes the function's own parameters (`def wrapper(file_id, n=_o_d0)`)
# rather than `*a, **k`: no tuple and dict to build per call, and template fields read local
# variables. Its own names start with _o_, and a parameter that would shadow one of them
# falls back to `*a, **k`.
_LANE = """
def make(_o_func, _o_spec, _o_plan, _o_queue, {constants}):
    {async_}def {name}{params}:
        _o_r = {await_}_o_func({call})
        try:
            _o_ctx = current_context()
            _o_frame = _o_ctx.get(SCOPE_KEY, _NO_FRAME)
            if _o_frame.{plain}:
                _o_n = len(_o_queue)
                if _o_n < dispatcher.{lane}:
                    try:
                        _o_values = {values}
                    except Exception:  # the careful loop nulls and counts the failing field
                        _o_values = _o_plan.resolve({args}, {kwargs}, _o_r, None)
                    _o_fields = _o_frame.fields
                    _o_queue.append(
                        (_o_spec, SUCCESS, clock(), _o_fields, _o_ctx, _o_values, None, None)
                    )
                    if _o_n == _WAKE_AT:
                        dispatcher.wake()
                    return _o_r
        except Exception as _o_exc:
            count_error("emit", _o_exc)
            return _o_r
        emit(_o_spec, SUCCESS, {args}, {kwargs}, _o_r, None)
        return _o_r
    return {name}
"""
_GENERIC = {"params": "(*a, **k)", "call": "*a, **k", "args": "a", "kwargs": "k"}


class _Placeholder:
    """Stands for a default value in a rendered signature: its repr is a variable's name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _own_parameters(func: Callable[..., Any]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """The source pieces of a wrapper taking *func*'s own parameters, and their defaults.

    None when that is not safe: no signature, a signature borrowed from a wrapped function
    (the callable may accept more), or a name the lane uses itself.
    """
    try:
        own = inspect.signature(func, follow_wrapped=False)
        if own != inspect.signature(func):
            return None
    except (TypeError, ValueError):
        return None
    defaults: dict[str, Any] = {}
    plain, call, args, kwargs = [], [], [], []
    for p in own.parameters.values():
        name = p.name
        if name.startswith("_o_") or name in _LANE_NAMES:
            return None
        default: Any = p.empty
        if p.default is not p.empty:
            default = _Placeholder(f"_o_d{len(defaults)}")
            defaults[default.name] = p.default
        plain.append(p.replace(annotation=p.empty, default=default))
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            call.append(name)
            args.append(name)
        elif p.kind is p.VAR_POSITIONAL:
            call.append(f"*{name}")
            args.append(f"*{name}")
        elif p.kind is p.KEYWORD_ONLY:
            call.append(f"{name}={name}")
            kwargs.append(f"{name!r}: {name}")
        else:
            call.append(f"**{name}")
            kwargs.append(f"**{name}")
    params = str(own.replace(parameters=plain, return_annotation=own.empty))
    pieces = {
        "params": params,
        "call": ", ".join(call),
        "args": f"({', '.join(args)}{',' if len(args) == 1 else ''})",
        "kwargs": f"{{{', '.join(kwargs)}}}",
    }
    return pieces, defaults


def record_on_success(
    func: Callable[..., Any], spec: Instrumentation, *, awaited: bool
) -> Callable[..., Any] | None:
    """Return the wrapper for the commonest case: a function recorded on success.

    *awaited*: *func* is a coroutine function, and the wrapper one too (it records after the
    await, with nothing else awaited).

    It appends the record itself when nothing unusual is in effect (no scope, or one
    without a session or idempotency key; no provider; the worker running; and for
    analytics a signed-in actor) and hands every other case to ``emit()``, which handles
    them all. The template fields are compiled into it, so a call costs about half of what
    ``emit()`` does. None for anything but success-only records without ``emit_if``, and for plans
    with callable fields (they need the Call): those take ``emit()`` for every call.
    """
    if spec.when != "success" or spec.kind not in (AUDIT, EVENT) or spec.emit_if is not None:
        return None
    own = _own_parameters(func)
    compiled = spec.plan.values_source(by_name=own is not None)
    if compiled is None:
        return None
    values, namespace = compiled
    if own is None:
        pieces = _GENERIC
        namespace["x"] = None  # no exception on this path: {result...} fields are read
    else:
        pieces, defaults = own
        namespace.update(defaults)
    is_event = spec.kind == EVENT
    name = getattr(func, "__name__", "")
    source = _LANE.format(
        constants=", ".join(namespace),
        values=values,
        name=name if name.isidentifier() and not name.startswith("_o_") else "recorded_call",
        # Analytics take the lane only for a signed-in actor (others need their opt-ins).
        plain="events_plain" if is_event else "plain",
        async_="async " if awaited else "",
        await_="await " if awaited else "",
        lane="events_lane_limit" if is_event else "lane_limit",
        **pieces,
    )
    filename = f"<obs_sdk wrapper of {getattr(func, '__qualname__', 'a function')}>"
    # In linecache, so a traceback through the wrapper shows its source like any module's.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), globals(), scope)
    make = scope["make"]
    return make(func, spec, spec.plan, dispatcher.queue, *namespace.values())  # type: ignore[no-any-return]


def _names_in_lane() -> frozenset[str]:
    """Every global and builtin name the lane's code reads (a parameter would shadow it)."""
    source = _LANE.format(
        constants="_o_S",
        values="()",
        name="recorded_call",
        plain="plain",
        lane="lane_limit",
        async_="",
        await_="",
        **_GENERIC,
    )
    scope: dict[str, Any] = {}
    exec(compile(source, "<lane>", "exec"), globals(), scope)
    code = scope["make"].__code__
    inner = next(c for c in code.co_consts if hasattr(c, "co_names"))
    read = {i.argval for i in dis.get_instructions(inner) if i.opname == "LOAD_GLOBAL"}
    return frozenset(read) | {"type", "getattr"}  # read by template field expressions


_LANE_NAMES = _names_in_lane()


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
