"""The fast lane: a wrapper compiled per decorated function for its commonest case.

A success-only record of a plain or ``async`` function, with its template fields inlined;
anything unusual falls back to ``_emit.emit()``. The generated code reads the hot path's
module globals (``clock``, ``dispatcher``) live from ``obs_sdk._emit``.
"""

from __future__ import annotations

import dis
import inspect
import linecache
from collections.abc import Callable
from typing import Any

from obs_sdk import _emit
from obs_sdk._dispatch import dispatcher
from obs_sdk._records import AUDIT, EVENT, Instrumentation

__all__ = ["record_on_success"]

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
    exec(compile(source, filename, "exec"), vars(_emit), scope)
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
    exec(compile(source, "<lane>", "exec"), vars(_emit), scope)
    code = scope["make"].__code__
    inner = next(c for c in code.co_consts if hasattr(c, "co_names"))
    read = {i.argval for i in dis.get_instructions(inner) if i.opname == "LOAD_GLOBAL"}
    return frozenset(read) | {"type", "getattr"}  # read by template field expressions


_LANE_NAMES = _names_in_lane()
