"""Generated code reads only the namespace it was given (issue 19, item 4).

Every wrapper obs_sdk generates runs in a namespace of ``_o_`` names its maker filled, with
empty builtins: no name falls through to a module's globals or to builtins, and no module
(whose globals another module could rewrite) is in it. What configure() changes reaches an
already generated wrapper through an object it was given, read on each call.
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import obs_sdk as obs
from obs_sdk.testing import SteppingClock


def _plain(n: int) -> int:
    return n


async def _coroutine(n: int) -> int:
    return n


def _generator(n: int) -> Iterator[int]:
    yield n


async def _async_generator(n: int) -> AsyncIterator[int]:
    yield n


SHAPES: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
    ("lane", _plain, {"metadata": {"n": "{n}", "r": "{result}"}}),
    ("full wrapper", _plain, {"metadata": {"n": "{n}"}, "when": "always"}),
    ("callable field", _plain, {"metadata": lambda call: {"n": call.args["n"]}}),
    ("coroutine", _coroutine, {"metadata": {"n": "{n}"}}),
    ("generator", _generator, {"metadata": {"n": "{n}"}}),
    ("async generator", _async_generator, {"metadata": {"n": "{n}"}}),
    ("builtin", max, {}),
]


@pytest.mark.parametrize(("shape", "func", "options"), SHAPES, ids=[s[0] for s in SHAPES])
def test_a_wrapper_reads_only_its_own_names(
    shape: str, func: Callable[..., Any], options: dict[str, Any]
) -> None:
    wrapper = obs.audited("op", **options)(func)
    names = wrapper.__globals__
    assert names["__builtins__"] == {}, shape
    assert sorted(n for n in names if n != "__builtins__" and not n.startswith("_o_")) == []
    modules = sorted(n for n, v in names.items() if isinstance(v, types.ModuleType))
    assert modules == [], f"{shape}: a module in the namespace: {modules}"


def test_the_clock_configure_sets_reaches_a_lane_made_before(sqlite_url: str) -> None:
    """The lane was generated before configure(): it reads the configured clock per call."""
    op = obs.audited("op", metadata={"n": "{n}"})(_plain)
    obs.configure(database=sqlite_url, clock=SteppingClock(start_ns=7_000_000_000))
    op(1)
    op(2)
    obs.flush()
    rows = obs.audit_log(order="asc")
    assert [(r.metadata, r.occurred_at.timestamp()) for r in rows] == [
        ({"n": 1}, 7.0),
        ({"n": 2}, 7.001),
    ]
