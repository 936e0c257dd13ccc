"""The one wrapper factory behind ``@audited`` and ``@tracked``.

It picks the function's kind (plain, coroutine, generator, async generator); ``_lane``
generates the cheapest correct wrapper for that kind and for ``when=``. User code never runs
inside obs_sdk's error guard: the call happens in the wrapper itself and its exception is
re-raised unchanged. ``classmethod``/``staticmethod`` objects are unwrapped, instrumented
and re-wrapped, so the decorator works on either side of them without depending on
``classmethod.__get__``.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Literal, get_args

from obs_sdk._hotpath._lane import ASYNC_GENERATOR, COROUTINE, FUNCTION, GENERATOR, generate
from obs_sdk._hotpath._params import Params
from obs_sdk._hotpath._records import Instrumentation
from obs_sdk._hotpath._templates import Plan
from obs_sdk.exceptions import ConfigurationError

__all__ = ["WHEN", "When", "build_plan", "defined_at", "instrument", "params_of"]

When = Literal["success", "failure", "always", "start"]  # when= of @audited and @tracked
WHEN: tuple[str, ...] = get_args(When)


def params_of(func: Any, decorator: str) -> Params:
    """Precompute *func*'s parameters, or explain what the decorator can wrap."""
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if not callable(target):
        raise ConfigurationError(f"{decorator} decorates functions and methods, not {func!r}")
    return Params(target)


def defined_at(func: Any, qualname: str) -> str:
    """*qualname* with the place *func* is defined, for messages: ``download (app/files.py:12)``.

    The path is relative to the working directory when it lies under it. *qualname* alone
    for a callable without Python code (a builtin, a partial, a callable object).
    """
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    code = getattr(target, "__code__", None)
    if code is None:
        return qualname
    path = code.co_filename
    cwd = os.getcwd()
    if path.startswith(os.path.join(cwd, "")):
        path = os.path.relpath(path, cwd)
    return f"{qualname} ({path}:{code.co_firstlineno})"


def build_plan(owner: str, params: Params, when: str) -> Plan:
    """Create an empty plan after checking *when*."""
    if when not in WHEN:
        raise ConfigurationError(
            f"{owner}: when={when!r} is not one of {', '.join(map(repr, WHEN))}"
        )
    return Plan(owner, params, when)


def instrument(func: Any, spec: Instrumentation) -> Any:
    """Return *func* wrapped so that each call is recorded per *spec*."""
    if isinstance(func, classmethod):
        return classmethod(instrument(func.__func__, spec))
    if isinstance(func, staticmethod):
        return staticmethod(instrument(func.__func__, spec))
    if inspect.isasyncgenfunction(func):
        kind = ASYNC_GENERATOR
    elif inspect.iscoroutinefunction(func):
        kind = COROUTINE
    elif inspect.isgeneratorfunction(func):
        kind = GENERATOR
    else:
        kind = FUNCTION
    return functools.wraps(func)(generate(func, spec, kind))
