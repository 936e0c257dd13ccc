"""Templates like ``"{file_id}"`` or ``"{result.name}"``: parsed and checked when decorating.

A field is a parameter name (or ``result``) followed by attribute and item lookups, as in
``str.format``. A plan is built once, at decoration: each template is parsed, each field
checked against the signature and given its parameter's position, and compiled into two
forms, a careful getter and a Python expression for the generated fast path
(``field_sources``). What runs later lives apart, named for its time:

- per call, on the caller's thread: ``_resolving.Resolver`` turns the fields into plain
  values (``spec.resolving``, on the plan's ``Instrumentation``);
- at render, on a dispatcher thread or at commit: ``_rendering.Renderer`` formats the
  resource ids, text slots and mappings from those values (``spec.rendering``).

Every name in generated code starts with ``_o_`` and comes from an explicit namespace
(``_codegen``): no user name (a parameter, a function's name) ever enters it.
"""

from __future__ import annotations

import itertools
import keyword
import string
from _string import formatter_field_name_split  # type: ignore[import-not-found]
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from obs_sdk._hotpath._codegen import Namespace
from obs_sdk._hotpath._params import Params
from obs_sdk._hotpath._plain import (
    PLAIN_TYPES,
    SCALARS,
    Args,
    Call,
    Kwargs,
    Raised,
    freeze,
    loaded_attribute,
)
from obs_sdk._hotpath._rendering import Renderer
from obs_sdk._hotpath._resolving import ARGS, CALL, RESULT, Resolver
from obs_sdk.exceptions import ConfigurationError

__all__ = ["Field", "Plan", "Slot"]

_PARSER = string.Formatter()

# Every name the fields' source reads, builtins included: they start with _o_, so no
# parameter (read by name in the lane's wrapper) can shadow one.
_FIELD_NAMES = {
    "_o_S": SCALARS,
    "_o_F": freeze,
    "_o_P": PLAIN_TYPES,
    "_o_A": loaded_attribute,
    "_o_type": type,
    "_o_len": len,
    "_o_getattr": getattr,
}


@dataclass(frozen=True, slots=True)
class Field:
    """A template's field inside a text slot: which resolved value, and how to format it."""

    index: int  # position in the call's resolved values
    conversion: str | None
    spec: str


# A slot says how one output value (resource id, a metadata key...) is made:
#   ("const", value) | ("field", index) | ("text", parts) | ("call", index)
Slot = tuple[str, Any]


class Plan:
    """How a decorator's resource/metadata/properties are made, built once at decoration.

    Holds what decoration decided: ``slots`` (how each output value is made), ``resolvers``
    (one getter per field: kind ARGS, RESULT or CALL) and the fields' source for generated
    code. The later stages read it and never change it: ``Resolver`` (call time) and
    ``Renderer`` (render time), made with the ``Instrumentation`` that carries the plan.
    They hold the plan, the plan does not hold them: a plan made per call (record_audit)
    is freed by its reference count, with no cycle to wait for the collector.
    """

    def __init__(self, owner: str, params: Params | None, when: str) -> None:
        self.owner = owner  # as messages name it: ``@audited('x') on f (app.py:3)``
        self.params = params
        self._when = when
        # (kind, fn): kind is ARGS (a template over arguments), RESULT (over the result) or CALL.
        self.resolvers: list[tuple[int, Callable[..., Any]]] = []
        self.slots: dict[str, Slot] = {}
        self.whole: str | None = None  # the mapping slot made by one callable, if any
        # Each field as Python source (generic, by name), None for a callable field.
        self._sources: list[tuple[str, str] | None] = []
        # (slot name, template) of each resolver that is a template field, for warnings.
        self.labels: list[tuple[str, str] | None] = []
        self._namespace = Namespace(_FIELD_NAMES)  # and the constants the fields add
        self._steps = itertools.count()  # names the temporaries of attribute steps
        # A parameter's or the result's value -> (its temporary, its "plain type" flag), set
        # by the first field stepping into it: later fields reuse the check (see below).
        self._checked: dict[tuple[str | bool, str], tuple[str, str]] = {}

    def field(self, index: int) -> str:
        """Resolver *index* as a log names it: ``field metadata.bytes ('{result.size}')``."""
        label = self.labels[index]
        if label is not None:
            return f"field {label[0]} ({label[1]!r})"
        fn = self.resolvers[index][1]
        name = next((n for n, s in self.slots.items() if s == ("call", index)), "?")
        return f"field {name} ({getattr(fn, '__qualname__', None) or type(fn).__name__})"

    # -- decoration time ---------------------------------------------------------------

    def add(self, name: str, spec: Any) -> None:
        """Compile *spec* (a constant, a template string or a callable) into slot *name*."""
        if callable(spec) and not isinstance(spec, (str, type)):
            self._set_slot(name, ("call", self._add_resolver(CALL, spec)))
        elif isinstance(spec, str) and ("{" in spec or "}" in spec):
            self._set_slot(name, self._compile_template(name, spec))
        else:
            self._set_slot(name, ("const", freeze(spec)))

    def _set_slot(self, name: str, slot: Slot) -> None:
        self.slots[name] = slot

    def add_mapping(self, name: str, spec: Any) -> None:
        """Compile ``metadata=``/``properties=``: a dict of slots or one callable for all."""
        if spec is None:
            return
        if callable(spec) and not isinstance(spec, Mapping):
            self.whole = name
            self._set_slot(name, ("call", self._add_resolver(CALL, spec)))
            return
        if not isinstance(spec, Mapping):
            raise ConfigurationError(
                f"{self.owner}: {name}= takes a dict or a callable taking the call, "
                f"got {type(spec).__name__}"
            )
        for key, value in spec.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"{self.owner}: {name} keys must be strings, got {key!r}")
            self.add(f"{name}.{key}", value)

    def _add_resolver(
        self,
        kind: int,
        fn: Callable[..., Any],
        source: tuple[str, str] | None = None,
        label: tuple[str, str] | None = None,
    ) -> int:
        self.resolvers.append((kind, fn))
        self._sources.append(source)
        self.labels.append(label)
        return len(self.resolvers) - 1

    def _compile_template(self, name: str, template: str) -> Slot:
        try:
            parsed = list(_PARSER.parse(template))
        except ValueError as exc:
            raise ConfigurationError(
                f"{self.owner}: {name} template {template!r} is not a valid format string ({exc})"
            ) from None
        parts: list[str | Field] = []
        for literal, field_name, format_spec, conversion in parsed:
            if literal:
                parts.append(literal)
            if field_name is None:
                continue
            if "{" in (format_spec or ""):
                raise ConfigurationError(
                    f"{self.owner}: {name} template {template!r} nests a field in a format spec; "
                    "use a callable instead"
                )
            kind, getter, source = self._compile_field(name, template, field_name)
            index = self._add_resolver(kind, getter, source, (name, template))
            parts.append(Field(index, conversion, format_spec or ""))
        fields = [p for p in parts if isinstance(p, Field)]
        if len(parts) == 1 and fields and not fields[0].spec and not fields[0].conversion:
            return ("field", fields[0].index)  # exactly one field: keep the value and its type
        return ("text", tuple(parts))

    def _compile_field(
        self, name: str, template: str, field_name: str
    ) -> tuple[int, Callable[..., Any], tuple[str, str]]:
        first, rest = formatter_field_name_split(field_name)
        path = tuple(rest)
        where = f"{self.owner}: {name} template {template!r}"
        if first == "" or isinstance(first, int):
            raise ConfigurationError(
                f"{where}: fields must name a parameter (like {{file_id}}) or {{result}}, "
                f"not {{{field_name}}}"
            )
        params = self.params
        if params is not None and first in params.by_name:
            arg = params.getter(first)
            source, local = params.source(first, self._namespace), first
            kind = ARGS
            base: Callable[..., Any] = lambda args, kwargs, result: arg(args, kwargs)  # noqa: E731
        elif first == "result":
            if self._when in ("failure", "start"):
                raise ConfigurationError(
                    f"{where}: {{result...}} cannot be used with when={self._when!r}, where no "
                    "result exists; use arguments only, or when='success'/'always'"
                )
            kind = RESULT
            source = local = "_o_r"
            base = lambda args, kwargs, result: result  # noqa: E731
        elif params is not None and params.signature is None:
            raise ConfigurationError(
                f"{where}: {{{first}}} cannot be bound: {params.qualname} has no signature "
                f"that inspect.signature can read ({params.unreadable}); use {{result...}}, "
                "a constant, or a callable taking the call"
            )
        else:
            known = ", ".join(params.by_name) if params is not None else "none"
            shown = params.describe() if params is not None else self.owner
            raise ConfigurationError(
                f"{where}: {{{first}}} is not a parameter of {shown} (parameters: {known}); "
                "name a parameter, {result...}, or pass a callable taking the call"
            )
        for step, (is_attr, key) in enumerate(path):
            if is_attr:
                first_step = step == 0  # from the argument or result itself
                source = self._attribute_step(source, key, first_step and "generic")
                local = self._attribute_step(local, key, first_step and "local")
            else:
                const = self._namespace.const(key)
                source, local = f"{source}[{const}]", f"{local}[{const}]"
        if not path:
            return kind, base, (source, local)

        def lookup(args: Args, kwargs: Kwargs, result: Any) -> Any:
            value = base(args, kwargs, result)
            for is_attr, key in path:
                value = loaded_attribute(value, key) if is_attr else value[key]
            return value

        return kind, lookup, (source, local)

    def _attribute_step(self, source: str, key: str, reusable: str | bool) -> str:
        """Python source reading attribute *key* of *source*'s value, loaded state only.

        Inline for instances of types known to be plain (``_o_P``, ~20 ns a step); anything
        else goes through ``loaded_attribute`` (``_o_A``), which never lets an ORM instance
        query. *reusable* (the variant of the source, generic or local, or False): *source*
        is an argument or the result, the same object in every field of the call, so that
        fields after the first (``{result.id}``, then ``{result.name}``) reuse its type
        check. Fields are evaluated in the order they were compiled, so the first one sets
        what the later ones read.
        """
        if key.isidentifier() and not keyword.iskeyword(key):
            name = repr(key)

            def plain(temp: str) -> str:
                return f"{temp}.{key}"
        else:
            name = self._namespace.const(key)

            def plain(temp: str) -> str:
                return f"_o_getattr({temp}, {name})"

        checked = self._checked.get((reusable, source)) if reusable else None
        if checked is not None:
            temp, flag = checked
            return f"({plain(temp)} if {flag} else _o_A({temp}, {name}))"
        n = next(self._steps)
        temp = f"_o_t{n}"
        check = f"_o_type({temp} := {source}) in _o_P"
        if reusable:
            flag = f"_o_p{n}"
            self._checked[reusable, source] = (temp, flag)
            check = f"({flag} := {check})"
        return f"({plain(temp)} if {check} else _o_A({temp}, {name}))"

    def field_sources(
        self, *, by_name: bool = False, success_only: bool = False
    ) -> tuple[list[str], Namespace] | None:
        """Return Python source of each field's frozen value, in order, and their namespace.

        The source reads ``_o_a`` (args), ``_o_k`` (kwargs), ``_o_r`` (result) and ``_o_x``
        (exception). *by_name*: the parameters as local variables instead of ``_o_a`` and
        ``_o_k``, for a wrapper with the function's own signature. *success_only*: no
        ``_o_x``, the result is always there. Each raises when its field fails or reads an
        unloaded ORM attribute (fall back to ``Resolver.resolve`` or ``resolve_field``, which
        null and count that field alone). One straight-line expression per field costs
        ~50 ns, against ~300 ns through the per-field getters. None when a field is a
        callable (those need the Call), or a resolver was set without source.
        """
        sources = self._sources
        if len(sources) != len(self.resolvers) or any(source is None for source in sources):
            return None
        items = []
        for i, ((kind, _), pair) in enumerate(zip(self.resolvers, sources, strict=True)):
            generic, local = pair  # type: ignore[misc]
            value = local if by_name else generic
            if kind == RESULT and not success_only:
                value = f"({value} if _o_x is None else None)"
            items.append(f"(_o_v{i} if _o_type(_o_v{i} := {value}) in _o_S else _o_F(_o_v{i}))")
        return items, Namespace(self._namespace)

    # -- shortcuts to the later stages, for callers that hold a plan only (the idempotency
    # key, which renders one slot per call). Each makes the stage afresh: nothing is cached.

    def call(self, args: Args, kwargs: Kwargs, result: Any, exception: Raised) -> Call:
        return Resolver(self).call(args, kwargs, result, exception)

    def render(self, name: str, values: tuple[Any, ...]) -> Any:
        return Renderer(self).render(name, values)

    def render_mapping(self, name: str, values: tuple[Any, ...]) -> dict[str, Any]:
        return Renderer(self).render_mapping(name, values)

    def renderer(
        self, texts: tuple[str, ...], mapping: str
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        return Renderer(self).compiled(texts, mapping)
