"""The one wrapper factory behind ``@audited`` and ``@tracked``.

It picks the cheapest correct wrapper for the function's kind (plain, coroutine,
generator, async generator) and for ``when=``. User code never runs inside obs_sdk's error
guard: the call happens in the wrapper itself and its exception is re-raised unchanged.
``classmethod``/``staticmethod`` objects are unwrapped, instrumented and re-wrapped, so the
decorator works on either side of them without depending on ``classmethod.__get__``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from obs_sdk._emit import emit
from obs_sdk._lane import record_on_success
from obs_sdk._records import FAILURE, STARTED, SUCCESS, Instrumentation
from obs_sdk._templates import Params, Plan
from obs_sdk.exceptions import ConfigurationError

__all__ = ["WHEN", "build_plan", "instrument", "params_of"]

WHEN = ("success", "failure", "always", "start")


def params_of(func: Any, decorator: str) -> Params:
    """Precompute *func*'s parameters, or explain what the decorator can wrap."""
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if not callable(target):
        raise ConfigurationError(f"{decorator} decorates functions and methods, not {func!r}")
    return Params(target)


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
        wrapper = _async_generator_wrapper(func, spec)
    elif inspect.iscoroutinefunction(func):
        wrapper = _coroutine_wrapper(func, spec)
    elif inspect.isgeneratorfunction(func):
        wrapper = _generator_wrapper(func, spec)
    else:
        wrapper = _function_wrapper(func, spec)
    return functools.wraps(func)(wrapper)


def _flags(spec: Instrumentation) -> tuple[bool, bool, bool]:
    when = spec.when
    return when == "start", when in ("success", "always"), when in ("failure", "always")


def _function_wrapper(func: Callable[..., Any], spec: Instrumentation) -> Callable[..., Any]:
    start, on_success, on_failure = _flags(spec)
    lane = record_on_success(func, spec, awaited=False)  # the default: the tightest path
    if lane is not None:
        return lane
    if on_success and not on_failure:

        def success_only(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            emit(spec, SUCCESS, args, kwargs, result, None)
            return result

        return success_only

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if start:
            emit(spec, STARTED, args, kwargs, None, None)
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            if on_failure:
                emit(spec, FAILURE, args, kwargs, None, exc)
            raise
        if on_success:
            emit(spec, SUCCESS, args, kwargs, result, None)
        return result

    return wrapper


def _coroutine_wrapper(func: Callable[..., Any], spec: Instrumentation) -> Callable[..., Any]:
    start, on_success, on_failure = _flags(spec)
    lane = record_on_success(func, spec, awaited=True)
    if lane is not None:
        return lane

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if start:
            emit(spec, STARTED, args, kwargs, None, None)
        try:
            result = await func(*args, **kwargs)
        except Exception as exc:
            if on_failure:
                emit(spec, FAILURE, args, kwargs, None, exc)
            raise
        if on_success:
            emit(spec, SUCCESS, args, kwargs, result, None)
        return result

    return wrapper


def _generator_wrapper(func: Callable[..., Any], spec: Instrumentation) -> Callable[..., Any]:
    start, on_success, on_failure = _flags(spec)
    record_close = spec.when == "always"

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # The body runs at the first next(): that is when a "start" record is made.
        if start:
            emit(spec, STARTED, args, kwargs, None, None)
        try:
            result = yield from func(*args, **kwargs)
        except GeneratorExit as exc:
            if record_close:
                emit(spec, FAILURE, args, kwargs, None, exc)
            raise
        except Exception as exc:
            if on_failure:
                emit(spec, FAILURE, args, kwargs, None, exc)
            raise
        if on_success:
            emit(spec, SUCCESS, args, kwargs, result, None)
        return result

    return wrapper


def _async_generator_wrapper(func: Callable[..., Any], spec: Instrumentation) -> Callable[..., Any]:
    start, on_success, on_failure = _flags(spec)
    record_close = spec.when == "always"

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if start:
            emit(spec, STARTED, args, kwargs, None, None)
        agen = func(*args, **kwargs)
        try:
            step = agen.asend(None)
            while True:
                try:
                    item = await step
                except StopAsyncIteration:
                    break
                try:
                    sent = yield item
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as thrown:  # athrow() delivers it where the body paused
                    step = agen.athrow(thrown)
                else:
                    step = agen.asend(sent)
        except GeneratorExit as exc:
            if record_close:
                emit(spec, FAILURE, args, kwargs, None, exc)
            raise
        except Exception as exc:
            if on_failure:
                emit(spec, FAILURE, args, kwargs, None, exc)
            raise
        if on_success:
            emit(spec, SUCCESS, args, kwargs, None, None)

    return wrapper
