"""A decorated function's parameters, read once at decoration.

Each parameter's position and kind is found here when decorating, so that a call binds
without ``Signature.bind``: a template field over an argument becomes either a small getter
(``getter``) or a Python expression inlined into generated code (``source``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from obs_sdk._hotpath._codegen import Namespace

__all__ = ["Params"]


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

    def source(self, name: str, namespace: Namespace) -> str:
        """Return a Python expression over ``_o_a`` (args) and ``_o_k`` (kwargs) reading *name*.

        Constants it needs are added to *namespace*. Used to compile a plan's fields into one
        straight-line function (see ``Plan.field_sources``).
        """
        index, p = self.by_name[name]
        named = namespace.const(name)
        default = namespace.const(None if p.default is inspect.Parameter.empty else p.default)
        if p.kind is p.VAR_POSITIONAL:
            return f"_o_a[{index}:]"
        if p.kind is p.VAR_KEYWORD:
            return f"{namespace.const(self.getter(name))}(_o_a, _o_k)"
        if p.kind is p.KEYWORD_ONLY:
            return f"_o_k.get({named}, {default})"
        # `_o_a` (a tuple's truth) is cheaper than `len(_o_a) > 0` for the usual first argument.
        given = "_o_a" if index == 0 else f"_o_len(_o_a) > {index}"
        if p.kind is p.POSITIONAL_ONLY:
            return f"(_o_a[{index}] if {given} else {default})"
        return f"(_o_a[{index}] if {given} else _o_k.get({named}, {default}))"

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
