"""Call time: a plan's fields resolved to plain values, on the caller's thread at return.

The common case is one compiled function over every field (a straight-line tuple built
from ``Plan.field_sources``), compiled the first time the plan resolves. When it raises (a
callable field, a failing lookup, an unloaded ORM attribute), each field goes through its
careful getter: a field that fails is None and counted, the others keep their values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from obs_sdk._guard import count, count_error, warn_once
from obs_sdk._hotpath._codegen import compile_function
from obs_sdk._hotpath._plain import SCALARS, Args, Call, Kwargs, Raised, Unloaded, freeze

if TYPE_CHECKING:
    from obs_sdk._hotpath._templates import Plan

__all__ = ["ARGS", "CALL", "RESULT", "Resolver"]

ARGS, RESULT, CALL = range(3)  # what a field's getter reads: the arguments, the result, the Call


def _no_fast(*args: Any) -> tuple[Any, ...]:
    raise NotImplementedError


class Resolver:
    """Resolves one plan's fields per call. Made with the Instrumentation, after decoration."""

    __slots__ = ("_fast", "plan")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan  # read only: its fields were final when this was made
        self._fast: Callable[..., tuple[Any, ...]] | None = None  # compiled on first use

    def resolve(
        self,
        args: Args,
        kwargs: Kwargs,
        result: Any,
        exception: Raised,
    ) -> tuple[Any, ...]:
        """Resolve every field to a plain value; a field that fails is None and counted."""
        fast = self._fast or self._compile()
        if fast is not _no_fast:
            try:
                return fast(args, kwargs, result, exception)
            except Exception:
                pass
        indexes = range(len(self.plan.resolvers))
        return tuple(self._careful(indexes, args, kwargs, result, exception))

    def resolve_field(
        self,
        index: int,
        args: Args,
        kwargs: Kwargs,
        result: Any,
        exception: Raised,
    ) -> Any:
        """Resolve field *index* alone, as ``resolve`` does: None and counted if it fails.

        For generated code whose inline field failed: the other fields keep their values.
        """
        return self._careful((index,), args, kwargs, result, exception)[0]

    def call(
        self,
        args: Args,
        kwargs: Kwargs,
        result: Any,
        exception: Raised,
    ) -> Call:
        """Build the ``Call`` that callables and ``emit_if`` receive."""
        params = self.plan.params
        bound = params.bind(args, kwargs) if params is not None else {}
        return Call(bound, result, exception)

    def _careful(
        self,
        indexes: Iterable[int],
        args: Args,
        kwargs: Kwargs,
        result: Any,
        exception: Raised,
    ) -> list[Any]:
        """The careful per-field getters: a field that fails is None and counted alone."""
        call = None
        values = []
        plan = self.plan
        resolvers = plan.resolvers
        for index in indexes:
            kind, fn = resolvers[index]
            try:
                if kind == ARGS:
                    value = fn(args, kwargs, result)
                elif kind == RESULT:
                    # A failure record has no result: its {result...} fields are NULL.
                    value = fn(args, kwargs, result) if exception is None else None
                else:
                    if call is None:
                        call = self.call(args, kwargs, result, exception)
                    value = fn(call)
                if type(value) not in SCALARS:
                    value = freeze(value)
            except Unloaded as unloaded:
                self._unloaded(index, unloaded)
                value = None
            except Exception as exc:
                count_error("template", exc, f"{plan.owner}: {plan.field(index)}")
                value = None
            values.append(value)
        return values

    def _unloaded(self, index: int, unloaded: Unloaded) -> None:
        """Count a field left NULL because it would have loaded an ORM attribute; warn once."""
        count("unloaded")
        owner = self.plan.owner
        name, template = self.plan.labels[index] or ("?", "?")
        warn_once(
            ("unloaded", owner, name, template),
            "obs_sdk: %s: %s template %r is recorded as NULL: %s.%s is not loaded (expired by "
            "a commit, deferred, or a lazy relationship), and a template never queries the "
            "database. Load it before the call returns (e.g. session.refresh(), "
            "selectinload()) or use a callable field. Further cases are counted in "
            "obs.stats()['unloaded'] and not logged.",
            owner,
            name,
            template,
            unloaded.class_name,
            unloaded.key,
        )

    def _compile(self) -> Callable[..., tuple[Any, ...]]:
        """The fields as one function ``(args, kwargs, result, exception) -> values``."""
        compiled = self.plan.field_sources() if self.plan.resolvers else None
        if compiled is None:
            self._fast = _no_fast
            return _no_fast
        items, namespace = compiled
        values = "".join(f"{item}, " for item in items)
        self._fast = compile_function(
            f"def _o_fast(_o_a, _o_k, _o_r, _o_x):\n    return ({values})\n",
            namespace,
            "fields",
            self.plan.owner,
            "_o_fast",
        )
        return self._fast
