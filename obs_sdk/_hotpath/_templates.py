"""Templates like ``"{file_id}"`` or ``"{result.name}"``: parsed and checked when decorating.

A field is a parameter name (or ``result``) followed by attribute and item lookups, as in
``str.format``. At return, on the caller's thread, each field is resolved to its value and
frozen into plain data; formatting the text happens later, on the dispatcher thread.

An attribute step on a SQLAlchemy ORM instance reads its loaded state only (see
``loaded_attribute``): a template never emits a query in the caller's session.

Fields and renderers are compiled into Python functions. Every name in that generated code
starts with ``_o_`` and comes from an explicit namespace: no user name (a parameter, a
function's name) ever enters it.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import inspect
import itertools
import keyword
import linecache
import string
import types
import uuid
import weakref
from _string import formatter_field_name_split  # type: ignore[import-not-found]
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from obs_sdk._guard import count, count_error, warn_once
from obs_sdk._vendor_private import SA_CLASS_MANAGER, SA_INSTANCE_STATE
from obs_sdk.exceptions import ConfigurationError

__all__ = ["Call", "Params", "Plan", "Unloaded", "compile_function", "freeze", "loaded_attribute"]

_MISSING: Any = object()
_PARSER = string.Formatter()

# Values stored as they are: immutable, and the dispatcher can serialise them.
SCALARS = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
        decimal.Decimal,
        bytes,
    }
)
_MAX_DEPTH = 8


def _NO_FAST(*args: Any) -> tuple[Any, ...]:
    raise NotImplementedError


ARGS, RESULT, CALL = range(3)  # what a resolver reads
_MAX_ITEMS = 1000


@dataclass(frozen=True, slots=True)
class Call:
    """What a callable field, ``metadata=``/``properties=`` callable or ``emit_if`` receives.

    ``args`` holds the bound arguments by name (defaults applied; empty for a callable
    without an inspectable signature, such as ``max``); ``result`` the return value (None
    for failures); ``exception`` the raised exception (None for success).
    """

    args: Mapping[str, Any]
    result: Any = None
    exception: BaseException | None = None


def freeze(value: Any, depth: int = 0) -> Any:
    """Copy *value* into plain data, so nothing reads a user object after the call returned."""
    kind = type(value)
    if kind in SCALARS:
        return value
    if isinstance(value, enum.Enum):
        return freeze(value.value, depth)
    if depth >= _MAX_DEPTH:
        return _text(value)
    if isinstance(value, Mapping):
        return {
            str(k): freeze(v, depth + 1)
            for k, v in list(value.items())[:_MAX_ITEMS]  # list(): a snapshot, safe to iterate
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [freeze(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    if isinstance(value, int):  # subclasses of the scalars become the plain scalar
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return _text(value)


def optional_text(value: Any) -> str | None:
    """A text column's value: None stays None, anything else becomes its text."""
    if value is None or type(value) is str:
        return value
    return _text(value)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        try:
            return object.__repr__(value)
        except Exception:  # pragma: no cover - object.__repr__ does not fail in practice
            return "<unrepresentable>"


_CONVERSIONS = {"r": "repr", "a": "ascii", "s": "str"}


def _whole_mapping(whole: Any) -> dict[str, Any]:
    """The mapping a ``metadata=``/``properties=`` callable gave (anything else: ``value``)."""
    return dict(whole) if isinstance(whole, Mapping) else {"value": whole}


# -- attribute steps: loaded state only on ORM instances ----------------------------------

# Types known not to be mapped by SQLAlchemy: an attribute step on their instances is a plain
# getattr. Generated code tests membership inline (~20 ns a step, against ~45 ns for a call);
# anything else goes through loaded_attribute(), which adds the type once it has checked it.
# Bounded, so that code creating classes at runtime cannot grow it without end.
_PLAIN_TYPES: set[type] = set()
_MAX_PLAIN_TYPES = 4096


class Unloaded(Exception):  # a signal inside the resolver, never raised to users
    """An attribute step found an ORM attribute that is not loaded; reading it would query."""

    def __init__(self, obj: Any, key: str) -> None:
        super().__init__(f"{type(obj).__name__}.{key} is not loaded")
        self.class_name = type(obj).__name__
        self.key = key


def loaded_attribute(obj: Any, key: str) -> Any:
    """Return ``getattr(obj, key)``, but never load anything on a SQLAlchemy ORM instance.

    A mapped instance is recognised without importing SQLAlchemy: its class has a
    ``_sa_class_manager`` (a dict of the mapped attribute names) and its loaded values live in
    its ``__dict__``. A mapped attribute missing from there on an instance that has an
    identity key (persistent or detached) is unloaded (expired, deferred, a lazy relationship):
    reading it would emit a SELECT in the caller's session, or fail once detached, so this
    raises ``Unloaded`` instead. An attribute that runs code (a ``@property``, a hybrid, any
    descriptor or ``__getattr__``) may read such an attribute in turn, so on an instance
    with anything unloaded it is ``Unloaded`` too: a template never queries. Transient and
    pending instances have nothing to load: read normally, as are plain instance and class
    attributes and methods.
    """
    kind = type(obj)
    manager = getattr(kind, SA_CLASS_MANAGER, None)
    if not isinstance(manager, dict):
        if len(_PLAIN_TYPES) < _MAX_PLAIN_TYPES:
            _PLAIN_TYPES.add(kind)
        return getattr(obj, key)
    state = getattr(obj, "__dict__", None)
    if state is None or getattr(state.get(SA_INSTANCE_STATE), "key", None) is None:
        return getattr(obj, key)  # transient or pending: nothing to load
    if key in manager:
        if key in state:
            return state[key]
        raise Unloaded(obj, key)
    if _runs_code(kind, key, state) and any(name not in state for name in manager):
        raise Unloaded(obj, key)
    return getattr(obj, key)


_PLAIN_ATTRIBUTES = (types.FunctionType, staticmethod, classmethod, types.BuiltinFunctionType)


def _runs_code(kind: type, key: str, state: dict[str, Any]) -> bool:
    """Whether ``getattr(obj, key)`` runs code that may read the instance's attributes."""
    found = inspect.getattr_static(kind, key, _ABSENT)
    if found is _ABSENT:
        return key not in state  # an instance attribute, or __getattr__
    if isinstance(found, _PLAIN_ATTRIBUTES):
        return False  # a method: bound, not called
    return hasattr(type(found), "__get__")  # a property, hybrid or other descriptor


_ABSENT = object()


# -- generated code ---------------------------------------------------------------------------

_GENERATED = itertools.count(1)


def compile_function(
    source: str, namespace: dict[str, Any], what: str, about: str, name: str = "_o_fn"
) -> Any:
    """Execute *source* in *namespace* and return the function it defines as *name*.

    *namespace* is the generated code's only global scope: every name the source reads must
    be in it (by convention they start with ``_o_``). The source gets a file name of its own,
    ``<obs_sdk WHAT #N of ABOUT>``, registered in linecache, so a traceback through it shows
    its lines like any module's (the model: attrs' ``_make_method``).
    """
    filename = f"<obs_sdk {what} #{next(_GENERATED)} of {about}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    function = namespace[name]
    # The source lives as long as the function: record_audit() and track() make a plan (and
    # its renderer) per call, which must not leave a linecache entry each.
    weakref.finalize(function, linecache.cache.pop, filename, None)
    return function


class Params:
    """A function's parameters, precomputed so that calls bind without ``Signature.bind``."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.qualname = getattr(func, "__qualname__", None) or repr(func)
        # Builtins such as max, itemgetter(0) or type have none: such a callable can be
        # decorated, but a template cannot name its arguments (see Plan._compile_field).
        self.signature: inspect.Signature | None = None
        self.unreadable: str | None = None  # why there is no signature
        try:
            self.signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            self.unreadable = str(exc)
        self.params = [] if self.signature is None else list(self.signature.parameters.values())
        self.by_name = {p.name: (i, p) for i, p in enumerate(self.params)}

    def describe(self) -> str:
        return f"{self.qualname}{self.signature or '(...)'}"

    def source(self, name: str, namespace: dict[str, Any]) -> str:
        """Return a Python expression over ``_o_a`` (args) and ``_o_k`` (kwargs) reading *name*.

        Constants it needs are added to *namespace*. Used to compile a plan's fields into one
        straight-line function (see ``Plan._compile_fast``).
        """
        index, p = self.by_name[name]
        tag = len(namespace)
        namespace[f"_o_name{tag}"] = name
        namespace[f"_o_default{tag}"] = None if p.default is inspect.Parameter.empty else p.default
        if p.kind is p.VAR_POSITIONAL:
            return f"_o_a[{index}:]"
        if p.kind is p.VAR_KEYWORD:
            namespace[f"_o_get{tag}"] = self.getter(name)
            return f"_o_get{tag}(_o_a, _o_k)"
        if p.kind is p.KEYWORD_ONLY:
            return f"_o_k.get(_o_name{tag}, _o_default{tag})"
        # `_o_a` (a tuple's truth) is cheaper than `len(_o_a) > 0` for the usual first argument.
        given = "_o_a" if index == 0 else f"_o_len(_o_a) > {index}"
        if p.kind is p.POSITIONAL_ONLY:
            return f"(_o_a[{index}] if {given} else _o_default{tag})"
        return f"(_o_a[{index}] if {given} else _o_k.get(_o_name{tag}, _o_default{tag}))"

    def getter(self, name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        """Return ``get(args, kwargs)`` for the parameter *name*; KeyError if there is none."""
        index, p = self.by_name[name]
        default = None if p.default is inspect.Parameter.empty else p.default
        if p.kind is p.VAR_POSITIONAL:
            return lambda args, kwargs: args[index:]
        if p.kind is p.VAR_KEYWORD:
            named = {q.name for q in self.params}
            return lambda args, kwargs: {k: v for k, v in kwargs.items() if k not in named}
        if p.kind is p.KEYWORD_ONLY:
            return lambda args, kwargs: kwargs.get(name, default)
        if p.kind is p.POSITIONAL_ONLY:
            return lambda args, kwargs: args[index] if len(args) > index else default

        def positional_or_keyword(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if len(args) > index:
                return args[index]
            return kwargs.get(name, default)

        return positional_or_keyword

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments by name, defaults applied (for callables and ``emit_if``)."""
        return {p.name: self.getter(p.name)(args, kwargs) for p in self.params}


@dataclass(frozen=True, slots=True)
class _Field:
    index: int  # position in the call's resolved values
    conversion: str | None
    spec: str


# A slot says how one output value (resource id, a metadata key...) is made:
#   ("const", value) | ("field", index) | ("text", parts) | ("call", index)
Slot = tuple[str, Any]


class Plan:
    """How a decorator's resource/metadata/properties are resolved and rendered.

    ``resolvers`` run on the caller's thread at return and yield plain values;
    ``render`` runs later (dispatcher thread or commit) and builds the final values.
    """

    def __init__(self, owner: str, params: Params | None, when: str) -> None:
        self._owner = owner
        self._params = params
        self._when = when
        # (kind, fn): kind is ARGS (a template over arguments), RESULT (over the result) or CALL.
        self.resolvers: list[tuple[int, Callable[..., Any]]] = []
        self.slots: dict[str, Slot] = {}
        self.whole: str | None = None  # the mapping slot made by one callable, if any
        # Template fields as Python expressions, compiled into one function on first use.
        self._sources: list[tuple[str, str] | None] = []
        # (slot name, template) of each resolver that is a template field, for warnings.
        self._labels: list[tuple[str, str] | None] = []
        # Every name the generated code reads, builtins included: they start with _o_, so no
        # parameter (read by name in the lane's wrapper) can shadow one.
        self._namespace: dict[str, Any] = {
            "_o_S": SCALARS,
            "_o_F": freeze,
            "_o_P": _PLAIN_TYPES,
            "_o_A": loaded_attribute,
            "_o_type": type,
            "_o_len": len,
            "_o_getattr": getattr,
        }
        self._steps = itertools.count()  # names the temporaries of attribute steps
        # A parameter's or the result's value -> (its temporary, its "plain type" flag), set
        # by the first field stepping into it: later fields reuse the check (see below).
        self._checked: dict[tuple[str | bool, str], tuple[str, str]] = {}
        self._fast: Callable[..., tuple[Any, ...]] | None = None
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}  # see _mapping_keys
        self._renderers: dict[tuple[Any, ...], Callable[..., tuple[Any, ...]]] = {}

    @property
    def owner(self) -> str:
        """What the plan belongs to, as messages name it: ``@audited('x') on f (app.py:3)``."""
        return self._owner

    def field(self, index: int) -> str:
        """Resolver *index* as a log names it: ``field metadata.bytes ('{result.size}')``."""
        label = self._labels[index]
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
        self._keys.clear()  # the render-time caches were built from the old slots
        self._renderers.clear()

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
                f"{self._owner}: {name}= takes a dict or a callable taking the call, "
                f"got {type(spec).__name__}"
            )
        for key, value in spec.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"{self._owner}: {name} keys must be strings, got {key!r}")
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
        self._labels.append(label)
        self._fast = None
        return len(self.resolvers) - 1

    def _compile_template(self, name: str, template: str) -> Slot:
        try:
            parsed = list(_PARSER.parse(template))
        except ValueError as exc:
            raise ConfigurationError(
                f"{self._owner}: {name} template {template!r} is not a valid format string ({exc})"
            ) from None
        parts: list[str | _Field] = []
        for literal, field_name, format_spec, conversion in parsed:
            if literal:
                parts.append(literal)
            if field_name is None:
                continue
            if "{" in (format_spec or ""):
                raise ConfigurationError(
                    f"{self._owner}: {name} template {template!r} nests a field in a format spec; "
                    "use a callable instead"
                )
            kind, getter, source = self._compile_field(name, template, field_name)
            index = self._add_resolver(kind, getter, source, (name, template))
            parts.append(_Field(index, conversion, format_spec or ""))
        fields = [p for p in parts if isinstance(p, _Field)]
        if len(parts) == 1 and fields and not fields[0].spec and not fields[0].conversion:
            return ("field", fields[0].index)  # exactly one field: keep the value and its type
        return ("text", tuple(parts))

    def _compile_field(
        self, name: str, template: str, field_name: str
    ) -> tuple[int, Callable[..., Any], tuple[str, str]]:
        first, rest = formatter_field_name_split(field_name)
        path = tuple(rest)
        where = f"{self._owner}: {name} template {template!r}"
        if first == "" or isinstance(first, int):
            raise ConfigurationError(
                f"{where}: fields must name a parameter (like {{file_id}}) or {{result}}, "
                f"not {{{field_name}}}"
            )
        params = self._params
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
            shown = params.describe() if params is not None else self._owner
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
                const = f"_o_c{len(self._namespace)}"
                self._namespace[const] = key
                source, local = f"{source}[{const}]", f"{local}[{const}]"
        if not path:
            return kind, base, (source, local)

        def lookup(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> Any:
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
            name = f"_o_c{len(self._namespace)}"
            self._namespace[name] = key

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

    # -- call time (caller's thread) -----------------------------------------------------

    def resolve(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: BaseException | None,
    ) -> tuple[Any, ...]:
        """Resolve every field to a plain value; a field that fails is None and counted."""
        fast = self._fast or self._compile_fast()
        if fast is not _NO_FAST:
            try:
                return fast(args, kwargs, result, exception)
            except Exception:
                pass
        return tuple(
            self._resolve_fields(range(len(self.resolvers)), args, kwargs, result, exception)
        )

    def resolve_field(
        self,
        index: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: BaseException | None,
    ) -> Any:
        """Resolve field *index* alone, as ``resolve`` does: None and counted if it fails.

        For generated code whose inline field failed: the other fields keep their values.
        """
        return self._resolve_fields((index,), args, kwargs, result, exception)[0]

    def _resolve_fields(
        self,
        indexes: Iterable[int],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: BaseException | None,
    ) -> list[Any]:
        """The careful per-field getters: a field that fails is None and counted alone."""
        call = None
        values = []
        resolvers = self.resolvers
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
                count_error("template", exc, f"{self._owner}: {self.field(index)}")
                value = None
            values.append(value)
        return values

    def _unloaded(self, index: int, unloaded: Unloaded) -> None:
        """Count a field left NULL because it would have loaded an ORM attribute; warn once."""
        count("unloaded")
        name, template = self._labels[index] or ("?", "?")
        warn_once(
            ("unloaded", self._owner, name, template),
            "obs_sdk: %s: %s template %r is recorded as NULL: %s.%s is not loaded (expired by "
            "a commit, deferred, or a lazy relationship), and a template never queries the "
            "database. Load it before the call returns (e.g. session.refresh(), "
            "selectinload()) or use a callable field. Further cases are counted in "
            "obs.stats()['unloaded'] and not logged.",
            self._owner,
            name,
            template,
            unloaded.class_name,
            unloaded.key,
        )

    def values_source(
        self, *, by_name: bool = False, success_only: bool = False
    ) -> tuple[str, dict[str, Any]] | None:
        """Return Python source of a tuple of every field's frozen value, and its namespace.

        ``field_sources`` joined into one expression: see there.
        """
        compiled = self.field_sources(by_name=by_name, success_only=success_only)
        if compiled is None:
            return None
        items, namespace = compiled
        return (f"({', '.join(items)},)" if items else "()"), namespace

    def field_sources(
        self, *, by_name: bool = False, success_only: bool = False
    ) -> tuple[list[str], dict[str, Any]] | None:
        """Return Python source of each field's frozen value, in order, and their namespace.

        The source reads ``_o_a`` (args), ``_o_k`` (kwargs), ``_o_r`` (result) and ``_o_x``
        (exception). *by_name*: the parameters as local variables instead of ``_o_a`` and
        ``_o_k``, for a wrapper with the function's own signature. *success_only*: no
        ``_o_x``, the result is always there. Each raises when its field fails or reads an
        unloaded ORM attribute (fall back to ``resolve`` or ``resolve_field``, which null and
        count that field alone). One
        straight-line expression per field costs ~50 ns, against ~300 ns through the
        per-field getters. None when a field is a callable: those need the Call.
        """
        sources = self._sources
        if any(source is None for source in sources):
            return None
        items = []
        for i, ((kind, _), pair) in enumerate(zip(self.resolvers, sources, strict=True)):
            generic, local = pair  # type: ignore[misc]
            value = local if by_name else generic
            if kind == RESULT and not success_only:
                value = f"({value} if _o_x is None else None)"
            items.append(f"(_o_v{i} if _o_type(_o_v{i} := {value}) in _o_S else _o_F(_o_v{i}))")
        return items, dict(self._namespace)

    def _compile_fast(self) -> Callable[..., tuple[Any, ...]]:
        compiled = self.values_source() if self._sources else None
        if compiled is None:
            self._fast = _NO_FAST
            return _NO_FAST
        source, namespace = compiled
        self._fast = compile_function(
            f"def _o_fast(_o_a, _o_k, _o_r, _o_x):\n    return {source}\n",
            namespace,
            "fields",
            self._owner,
            "_o_fast",
        )
        return self._fast

    def call(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: BaseException | None,
    ) -> Call:
        """Build the ``Call`` that callables and ``emit_if`` receive."""
        bound = self._params.bind(args, kwargs) if self._params is not None else {}
        return Call(bound, result, exception)

    # -- render time (dispatcher thread or commit) -----------------------------------------

    def render(self, name: str, values: tuple[Any, ...]) -> Any:
        """Return the final value of slot *name* from the resolved *values*."""
        slot = self.slots.get(name)
        if slot is None:
            return None
        kind, data = slot
        if kind == "const":
            return data
        if kind in ("field", "call"):
            return values[data] if data < len(values) else None
        out = []
        for part in data:
            if isinstance(part, str):
                out.append(part)
                continue
            value = values[part.index]
            if part.conversion == "r":
                value = repr(value)
            elif part.conversion == "a":
                value = ascii(value)
            elif part.conversion == "s":
                value = str(value)
            out.append(format(value, part.spec) if part.spec else str(value))
        return "".join(out)

    def render_mapping(self, name: str, values: tuple[Any, ...]) -> dict[str, Any]:
        """Render a ``metadata``/``properties`` mapping (one callable, or a dict of slots)."""
        if self.whole == name:
            return _whole_mapping(self.render(name, values))
        render = self.render
        data = {}
        for key, slot in self._mapping_keys(name):
            try:
                data[key] = render(slot, values)
            except Exception as exc:  # e.g. "{n:%Y}" on an int: that key alone is lost
                count_error("render", exc, f"{self._owner}: field {slot}")
                data[key] = None
        return data

    def renderer(
        self, texts: tuple[str, ...], mapping: str
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        """Return ``render(values)``: the text slots *texts* (str or None) and the *mapping*.

        Compiled into one straight-line function on first use, as ``render``/``render_mapping``
        would give them slot by slot (about half their cost). It raises where any slot would
        fail: then render slot by slot, which nulls and counts the failing slot alone.
        """
        key = (texts, mapping)
        compiled = self._renderers.get(key)
        if compiled is None:
            compiled = self._renderers[key] = self._compile_renderer(texts, mapping)
        return compiled

    def _compile_renderer(
        self, texts: tuple[str, ...], mapping: str
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        namespace: dict[str, Any] = {
            "_o_T": optional_text,
            "_o_W": _whole_mapping,
            "_o_format": format,
            "_o_str": str,
            "_o_repr": repr,
            "_o_ascii": ascii,
        }

        def const(value: Any) -> str:
            name = f"_o_c{len(namespace)}"
            namespace[name] = value
            return name

        def expression(name: str) -> str:
            slot = self.slots.get(name)
            if slot is None:
                return "None"
            kind, data = slot
            if kind == "const":
                return const(data)
            if kind in ("field", "call"):
                return f"_o_v[{data}]"
            parts = []
            for part in data:
                if isinstance(part, str):
                    parts.append(const(part))
                    continue
                value = f"_o_v[{part.index}]"
                if part.conversion in ("r", "a", "s"):
                    value = f"_o_{_CONVERSIONS[part.conversion]}({value})"
                parts.append(
                    f"_o_format({value}, {const(part.spec)})" if part.spec else f"_o_str({value})"
                )
            return f"''.join(({', '.join(parts)},))"

        items = []
        for name in texts:  # _o_T(): None stays None, anything else becomes its text
            slot = self.slots.get(name)
            text = (
                slot is None
                or slot[0] == "text"
                or (isinstance(slot[1], str) and slot[0] == "const")
            )
            items.append(expression(name) if text else f"_o_T({expression(name)})")
        if self.whole == mapping:
            items.append(f"_o_W({expression(mapping)})")
        else:
            pairs = (
                f"{const(key)}: {expression(slot)}" for key, slot in self._mapping_keys(mapping)
            )
            items.append(f"{{{', '.join(pairs)}}}")
        return compile_function(  # type: ignore[no-any-return]
            f"def _o_render(_o_v):\n    return ({', '.join(items)},)\n",
            namespace,
            "renderer",
            self._owner,
            "_o_render",
        )

    def _mapping_keys(self, name: str) -> tuple[tuple[str, str], ...]:
        """(key, slot name) of mapping *name*, found once: slots do not change after decoration."""
        keys = self._keys.get(name)
        if keys is None:
            prefix = name + "."
            keys = tuple((k[len(prefix) :], k) for k in self.slots if k.startswith(prefix))
            self._keys[name] = keys
        return keys
