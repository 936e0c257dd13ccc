"""Render time: a plan's slots made from the resolved values, off the caller's thread.

Runs on a dispatcher thread (or at commit): resource ids, text slots (``"{a!r}-{b:>6}"``)
and the ``metadata``/``properties`` mappings are formatted here, from the plain values the
caller's thread resolved. ``compiled`` gives one straight-line function per record shape;
``render`` and ``render_mapping`` go slot by slot, so that a failing slot is lost alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from obs_sdk._guard import count_error
from obs_sdk._hotpath._codegen import Namespace, compile_function
from obs_sdk._hotpath._plain import optional_text, whole_mapping

if TYPE_CHECKING:
    from obs_sdk._hotpath._templates import Plan

__all__ = ["Renderer"]

_CONVERSIONS = {"r": "repr", "a": "ascii", "s": "str"}


class Renderer:
    """Renders one plan's slots. Made with the Instrumentation, after decoration."""

    __slots__ = ("_compiled", "_keys", "plan")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan  # read only: its slots were final when this was made
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}  # see _mapping_keys
        self._compiled: dict[tuple[Any, ...], Callable[..., tuple[Any, ...]]] = {}

    def render(self, name: str, values: tuple[Any, ...]) -> Any:
        """Return the final value of slot *name* from the resolved *values*."""
        slot = self.plan.slots.get(name)
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
        if self.plan.whole == name:
            return whole_mapping(self.render(name, values))
        render = self.render
        data = {}
        for key, slot in self._mapping_keys(name):
            try:
                data[key] = render(slot, values)
            except Exception as exc:  # e.g. "{n:%Y}" on an int: that key alone is lost
                count_error("render", exc, f"{self.plan.owner}: field {slot}")
                data[key] = None
        return data

    def compiled(
        self, texts: tuple[str, ...], mapping: str
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        """Return ``render(values)``: the text slots *texts* (str or None) and the *mapping*.

        Compiled into one straight-line function on first use, as ``render``/``render_mapping``
        would give them slot by slot (about half their cost). It raises where any slot would
        fail: then render slot by slot, which nulls and counts the failing slot alone.
        """
        key = (texts, mapping)
        function = self._compiled.get(key)
        if function is None:
            function = self._compiled[key] = self._compile(texts, mapping)
        return function

    def _compile(
        self, texts: tuple[str, ...], mapping: str
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        plan = self.plan
        namespace = Namespace(
            {
                "_o_T": optional_text,
                "_o_W": whole_mapping,
                "_o_format": format,
                "_o_str": str,
                "_o_repr": repr,
                "_o_ascii": ascii,
            }
        )
        const = namespace.const

        def expression(name: str) -> str:
            slot = plan.slots.get(name)
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
            slot = plan.slots.get(name)
            text = (
                slot is None
                or slot[0] == "text"
                or (isinstance(slot[1], str) and slot[0] == "const")
            )
            items.append(expression(name) if text else f"_o_T({expression(name)})")
        if plan.whole == mapping:
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
            plan.owner,
            "_o_render",
        )

    def _mapping_keys(self, name: str) -> tuple[tuple[str, str], ...]:
        """(key, slot name) of mapping *name*, found once: slots do not change after decoration."""
        keys = self._keys.get(name)
        if keys is None:
            prefix = name + "."
            keys = tuple((k[len(prefix) :], k) for k in self.plan.slots if k.startswith(prefix))
            self._keys[name] = keys
        return keys
