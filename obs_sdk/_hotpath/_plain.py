"""Plain values: what a record may hold, and how a user's object becomes one.

A template field is resolved on the caller's thread and frozen into plain data here
(``freeze``), so that nothing reads a user object after the call returned. An attribute
step on a SQLAlchemy ORM instance reads its loaded state only (``loaded_attribute``): a
template never emits a query in the caller's session.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import inspect
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from obs_sdk._vendor_private import SA_CLASS_MANAGER, SA_INSTANCE_STATE

__all__ = [
    "PLAIN_TYPES",
    "SCALARS",
    "Args",
    "Call",
    "Kwargs",
    "Raised",
    "Unloaded",
    "freeze",
    "loaded_attribute",
    "optional_text",
    "whole_mapping",
]

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
_MAX_ITEMS = 1000


# A call as the hot path passes it on, unbound: its positional and keyword arguments, and
# the exception it raised (None for success).
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Raised = BaseException | None


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


def whole_mapping(whole: Any) -> dict[str, Any]:
    """The mapping a ``metadata=``/``properties=`` callable gave (anything else: ``value``)."""
    return dict(whole) if isinstance(whole, Mapping) else {"value": whole}


# -- attribute steps: loaded state only on ORM instances ----------------------------------

# Types known not to be mapped by SQLAlchemy: an attribute step on their instances is a plain
# getattr. Generated code tests membership inline (~20 ns a step, against ~45 ns for a call);
# anything else goes through loaded_attribute(), which adds the type once it has checked it.
# Bounded, so that code creating classes at runtime cannot grow it without end.
PLAIN_TYPES: set[type] = set()
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
        if len(PLAIN_TYPES) < _MAX_PLAIN_TYPES:
            PLAIN_TYPES.add(kind)
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
