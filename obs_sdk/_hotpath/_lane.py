"""Generated wrappers: one compiled per decorated function, with the function's own parameters.

Four shapes: a plain or ``async`` function (with, for its commonest case, the fast lane that
appends the record itself), a generator and an async generator. Each is Python source
compiled per decorated function, so that:

- template fields are inlined into the lane (no per-field calls);
- a plain Python function's wrapper takes that function's own parameters
  (``def _o_wrapper(file_id, n=_o_d0)``): Python binds the arguments when the wrapper is
  called, so a wrong call raises ``TypeError`` at the call, generators and coroutines
  included, exactly as undecorated; and no tuple and dict are built per call;
- anything else (a builtin, a partial, a callable object, a signature borrowed through
  ``__signature__`` or ``__wrapped__``) gets ``(*_o_a, **_o_k)``, passed through untouched.

Every name the generated code uses starts with ``_o_`` and comes from the namespace it is
executed in, built here: no user name (the function's, a parameter's) ever enters it. The
function is defined as ``_o_wrapper``; ``functools.wraps`` then gives it the function's
``__name__``/``__qualname__``, and its code object carries the name too, for tracebacks.
The namespace is compiled by ``_codegen.compile_function`` with empty builtins. What
configure() changes is read through objects that are never replaced, given explicitly:
``_o_rt`` (``_runtime.runtime``: the clock) and ``_o_dispatcher`` (its lane limits).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._guard import count_error
from obs_sdk._hotpath import _emit
from obs_sdk._hotpath._codegen import Namespace, compile_function
from obs_sdk._hotpath._records import AUDIT, EVENT, FAILURE, STARTED, SUCCESS, Instrumentation
from obs_sdk._hotpath._runtime import runtime
from obs_sdk._ledger import _changes
from obs_sdk._scope._context import SCOPE_KEY, current_context

__all__ = ["ASYNC_GENERATOR", "COROUTINE", "FUNCTION", "GENERATOR", "generate"]

FUNCTION, COROUTINE, GENERATOR, ASYNC_GENERATOR = "function", "coroutine", "generator", "agen"

# The fast lane: a success-only record of a plain or async function, appended to the queue by
# the wrapper itself when nothing unusual is in effect (no scope, or one without a session or
# idempotency key; no provider; the worker running; for analytics a signed-in actor); every
# other case goes to _emit.emit(), which handles them all. The dispatcher's lane limit is 0
# while a scope provider, a capture or a missing worker needs the full path. At the intake's
# bound in overflow="drop" (its drop limit; never in "block"), the lane counts the drop
# without making the record: a dropped call costs less than a queued one. The clock is read
# into a local first: CPython 3.11 specialises `_o_rt.clock` (an attribute) but not the
# method-call form `_o_rt.clock()` on an instance, which costs ~20 ns more a call.
_LANE = """\
{async_}def _o_wrapper{params}:
    _o_r = {await_}_o_func({call})
    try:
        _o_ctx = _o_current_context()
        _o_frame = _o_ctx.get(_o_SCOPE_KEY, _o_NO_FRAME)
        if _o_frame.{plain}:
            _o_n = _o_len(_o_queue)
            if _o_n < _o_dispatcher.{lane}:
{fields}                _o_clock = _o_rt.clock
                _o_queue.append(
                    (_o_spec, _o_SUCCESS, _o_clock(), _o_frame.fields, _o_ctx, {values},
                     None, None)
                )
                if _o_n == _o_WAKE_AT:
                    _o_dispatcher.wake()
                return _o_r
            if _o_n >= _o_dispatcher.{drop_at}:
                _o_count_drop()
                return _o_r
    except _o_Exception as _o_exc:
        _o_count_error("emit", _o_exc, _o_about)
        return _o_r
    _o_emit(_o_spec, _o_SUCCESS, {args}, {kwargs}, _o_r, None)
    return _o_r
"""

# The body of a generator's wrapper (its own parameters) or of the driver a plain wrapper
# returns (any other callable): records when exhausted, on failure, or closed early.
_GENERATOR = """\
{start}    try:
        _o_r = yield from {gen}
    except _o_GeneratorExit as _o_exc:
{closed}        raise
    except _o_Exception as _o_exc:
{failed}        raise
{succeeded}    return _o_r
"""

_ASYNC_GENERATOR = """\
{start}{agen}    try:
        _o_step = _o_agen.asend(None)
        while True:
            try:
                _o_item = await _o_step
            except _o_StopAsyncIteration:
                break
            try:
                _o_sent = yield _o_item
            except _o_GeneratorExit:
                await _o_agen.aclose()
                raise
            except _o_BaseException as _o_thrown:  # athrow() delivers it where the body paused
                _o_step = _o_agen.athrow(_o_thrown)
            else:
                _o_step = _o_agen.asend(_o_sent)
    except _o_GeneratorExit as _o_exc:
{closed}        raise
    except _o_Exception as _o_exc:
{failed}        raise
{succeeded}"""

# A callable without a trustworthy signature of its own: arguments pass through untouched.
_GENERIC = {"params": "(*_o_a, **_o_k)", "call": "*_o_a, **_o_k", "args": "_o_a", "kwargs": "_o_k"}

# The plain wrapper of such a generator (function): calling the callable binds its arguments
# at the call, as undecorated; the returned driver records as the generator runs.
_DRIVEN = """\
def _o_wrapper(*_o_a, **_o_k):
    return _o_drive(_o_func(*_o_a, **_o_k), _o_a, _o_k)

{async_}def _o_drive({gen}, _o_a, _o_k):
"""


class _Placeholder:
    """Stands for a default value in a rendered signature: its repr is a variable's name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def own_parameters(func: Callable[..., Any]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """The source pieces of a wrapper taking *func*'s own parameters, and their defaults.

    Only for a plain Python function whose signature comes from its code: not one with a
    ``__signature__`` (what it says it takes may not be what it takes), nor one whose
    ``__wrapped__`` shows other parameters than its own. None otherwise, and for a parameter
    named like the wrapper's own names (``_o_...``).
    """
    if not isinstance(func, types.FunctionType) or getattr(func, "__signature__", None) is not None:
        return None
    try:
        own = inspect.signature(func, follow_wrapped=False)
        if hasattr(func, "__wrapped__") and own != inspect.signature(func):
            return None
    except (TypeError, ValueError):
        return None
    defaults: dict[str, Any] = {}
    plain, call, args, kwargs = [], [], [], []
    for p in own.parameters.values():
        name = p.name
        if name.startswith("_o_"):
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


def generate(func: Callable[..., Any], spec: Instrumentation, kind: str) -> Callable[..., Any]:
    """Return the wrapper recording each call of *func* per *spec*.

    *kind*: FUNCTION, COROUTINE (the wrapper is a coroutine function too), GENERATOR or
    ASYNC_GENERATOR (a generator / async generator function when *func* has parameters of
    its own, else a plain function returning a recording generator).
    """
    own = own_parameters(func)
    namespace = Namespace(
        {
            "_o_func": func,
            "_o_spec": spec,
            "_o_emit": _emit.emit,
            "_o_SUCCESS": SUCCESS,
            "_o_FAILURE": FAILURE,
            "_o_STARTED": STARTED,
            "_o_Exception": Exception,
            "_o_GeneratorExit": GeneratorExit,
            "_o_BaseException": BaseException,
            "_o_StopAsyncIteration": StopAsyncIteration,
        }
    )
    if own is None:
        pieces = _GENERIC
    else:
        pieces, defaults = own
        namespace.update(defaults)
    if spec.changes and kind in (FUNCTION, COROUTINE):  # only these: see audited()
        namespace.update(
            _o_begin=_changes.begin,
            _o_finish=_changes.finish,
            _o_emit_changes=_changes.emit_changes,
        )
        source = _changes_call(spec, pieces, awaited=kind == COROUTINE)
    elif kind in (FUNCTION, COROUTINE):
        lane = _lane(spec, pieces, namespace, by_name=own is not None, awaited=kind == COROUTINE)
        source = lane if lane is not None else _call(spec, pieces, awaited=kind == COROUTINE)
    else:
        source = _generator(spec, pieces, own is not None, awaited=kind == ASYNC_GENERATOR)
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    about = f"{getattr(func, '__module__', None)}.{qualname or type(func).__name__}"
    what = "lane" if "_o_queue" in namespace else "wrapper"
    wrapper = compile_function(source, namespace, what, about, "_o_wrapper")
    for generated in (wrapper, wrapper.__globals__.get("_o_drive")):
        if generated is not None:
            _name_code(generated, getattr(func, "__name__", None), qualname)
    return wrapper  # type: ignore[no-any-return]


def _name_code(generated: Any, name: Any, qualname: Any) -> None:
    """Name the generated code after the function, so that tracebacks read ``in download``."""
    code = generated.__code__
    if isinstance(name, str):
        code = code.replace(co_name=name)
    if isinstance(qualname, str) and hasattr(code, "co_qualname"):  # Python 3.11+
        code = code.replace(co_qualname=qualname)
    generated.__code__ = code


def _flags(spec: Instrumentation) -> tuple[bool, bool, bool]:
    when = spec.when
    return when == "start", when in ("success", "always"), when in ("failure", "always")


def _lane(
    spec: Instrumentation,
    pieces: dict[str, str],
    namespace: Namespace,
    *,
    by_name: bool,
    awaited: bool,
) -> str | None:
    """The fast lane's source for a success-only record, adding what it reads to *namespace*.

    None for anything but success-only records without ``emit_if``, and for plans with
    callable fields (they need the Call): those take the full wrapper, which calls ``emit()``.
    The lane costs about half of what ``emit()`` does.
    """
    if spec.when != "success" or spec.kind not in (AUDIT, EVENT) or spec.emit_if is not None:
        return None
    compiled = spec.plan.field_sources(by_name=by_name, success_only=True)
    if compiled is None:
        return None
    items, plan_namespace = compiled
    namespace.update(plan_namespace)
    namespace.update(
        _o_resolving=spec.resolving,  # a field that failed inline, alone
        _o_queue=dispatcher.queue,
        _o_rt=runtime,  # never replaced: configure() sets its clock, read on each call
        _o_dispatcher=dispatcher,  # never replaced: its lane limits are read on each call
        _o_current_context=current_context,
        _o_SCOPE_KEY=SCOPE_KEY,
        _o_NO_FRAME=_emit._NO_FRAME,
        _o_WAKE_AT=_emit._WAKE_AT,
        _o_len=len,
        _o_count_error=count_error,
        _o_count_drop=dispatcher.count_drop,
        _o_about=spec.plan.owner,  # who failed, for the log line
    )
    is_event = spec.kind == EVENT
    return _LANE.format(
        fields="".join(_field(i, item, pieces) for i, item in enumerate(items)),
        values=f"({''.join(f'_o_v{i}, ' for i in range(len(items)))})",
        # Analytics take the lane only for a signed-in actor (others need their opt-ins).
        plain="events_plain" if is_event else "plain",
        lane="events_lane_limit" if is_event else "lane_limit",
        drop_at="events_drop_at" if is_event else "drop_at",
        async_="async " if awaited else "",
        await_="await " if awaited else "",
        **pieces,
    )


def _field(index: int, item: str, pieces: dict[str, str]) -> str:
    """The lane's statement resolving field *index* inline into ``_o_v<index>``.

    When it raises (an unloaded ORM attribute, a failing lookup), that field alone goes
    through the careful getter, which nulls and counts it; the others keep their values.
    """
    args, kwargs = pieces["args"], pieces["kwargs"]
    careful = f"_o_resolving.resolve_field({index}, {args}, {kwargs}, _o_r, None)"
    return (
        f"                try:\n"
        f"                    _o_v{index} = {item}\n"
        f"                except _o_Exception:\n"
        f"                    _o_v{index} = {careful}\n"
    )


def _call(spec: Instrumentation, pieces: dict[str, str], *, awaited: bool) -> str:
    """A plain or async function's wrapper for any ``when=`` (and the lane's exceptions)."""
    start, on_success, on_failure = _flags(spec)
    args, kwargs = pieces["args"], pieces["kwargs"]
    call = f"{'await ' if awaited else ''}_o_func({pieces['call']})"
    lines = [f"{'async ' if awaited else ''}def _o_wrapper{pieces['params']}:"]
    if start:
        lines.append(f"    _o_emit(_o_spec, _o_STARTED, {args}, {kwargs}, None, None)")
    if on_failure:
        lines += [
            "    try:",
            f"        _o_r = {call}",
            "    except _o_Exception as _o_exc:",
            f"        _o_emit(_o_spec, _o_FAILURE, {args}, {kwargs}, None, _o_exc)",
            "        raise",
        ]
    else:
        lines.append(f"    _o_r = {call}")
    if on_success:
        lines.append(f"    _o_emit(_o_spec, _o_SUCCESS, {args}, {kwargs}, _o_r, None)")
    lines.append("    return _o_r")
    return "\n".join(lines) + "\n"


def _changes_call(spec: Instrumentation, pieces: dict[str, str], *, awaited: bool) -> str:
    """The wrapper of a call made with ``changes=``: it follows the scope session's changes.

    Following starts before the call and always stops when it ends (``finally``); the success
    record carries what the call wrote. Only ``changes=`` decorations get this wrapper.
    """
    _, _, on_failure = _flags(spec)
    args, kwargs = pieces["args"], pieces["kwargs"]
    lines = [
        f"{'async ' if awaited else ''}def _o_wrapper{pieces['params']}:",
        "    _o_t = _o_begin(_o_spec)",
        "    try:",
        f"        _o_r = {'await ' if awaited else ''}_o_func({pieces['call']})",
    ]
    if on_failure:
        lines += [
            "    except _o_Exception as _o_exc:",
            f"        _o_emit(_o_spec, _o_FAILURE, {args}, {kwargs}, None, _o_exc)",
            "        raise",
        ]
    lines += [
        "    finally:",
        "        _o_c = _o_finish(_o_t)",
        f"    _o_emit_changes(_o_spec, _o_SUCCESS, {args}, {kwargs}, _o_r, _o_c)",
        "    return _o_r",
    ]
    return "\n".join(lines) + "\n"


def _generator(spec: Instrumentation, pieces: dict[str, str], own: bool, *, awaited: bool) -> str:
    """A generator's or async generator's wrapper: its own parameters, or a plain driver."""
    start, on_success, on_failure = _flags(spec)
    if own:
        head = f"{'async ' if awaited else ''}def _o_wrapper{pieces['params']}:\n"
        args, kwargs = pieces["args"], pieces["kwargs"]
        gen = f"_o_func({pieces['call']})"
    else:
        gen = "_o_agen" if awaited else "_o_gen"
        head = _DRIVEN.format(async_="async " if awaited else "", gen=gen)
        args, kwargs = "_o_a", "_o_k"

    def emit(indent: str, outcome: str, result: str, exception: str) -> str:
        return f"{indent}_o_emit(_o_spec, {outcome}, {args}, {kwargs}, {result}, {exception})\n"

    failure = emit("        ", "_o_FAILURE", "None", "_o_exc")
    pieces_of_body = {
        "start": emit("    ", "_o_STARTED", "None", "None") if start else "",
        "closed": failure if spec.when == "always" else "",
        "failed": failure if on_failure else "",
    }
    if awaited:
        body = _ASYNC_GENERATOR.format(
            agen=f"    _o_agen = {gen}\n" if own else "",
            succeeded=emit("    ", "_o_SUCCESS", "None", "None") if on_success else "",
            **pieces_of_body,
        )
    else:
        body = _GENERATOR.format(
            gen=gen,
            succeeded=emit("    ", "_o_SUCCESS", "_o_r", "None") if on_success else "",
            **pieces_of_body,
        )
    return head + body
