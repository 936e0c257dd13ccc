"""The generated wrappers in the shapes real code gives them: any name, any callable.

Issue 14, items 12 to 14. A decorated function may be named like anything the generated code
uses (``len``, ``clock``, ``emit``...) or carry a keyword as ``__name__``; its parameters may be
named like builtins; generators and coroutines must bind their arguments when called; a
custom ``__signature__`` must never change what a call passes; and any callable, builtins and
partials included, can be decorated.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import keyword
import operator
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.pool import StaticPool

import obs_sdk as obs
from obs_sdk.testing import capture

USER = obs.Actor.user("u_1", name="Ada")

# Names the generated code reads or defines, now or in earlier versions: a user's function
# or parameter named like one of them must not change what the wrapper does.
CODE_NAMES = [
    "make", "clock", "dispatcher", "emit", "current_context", "count_error", "len", "type",
    "getattr", "Exception", "GeneratorExit", "SCOPE_KEY", "SUCCESS", "FAILURE", "STARTED",
    "_NO_FRAME", "_WAKE_AT", "recorded_call", "wrapper", "fast", "render", "a", "k", "r", "x",
    "v", "T", "W", "n_1", "d_1", "g_1", "c1", "_o_r", "_o_func", "_o_spec", "_o_plan",
    "_o_queue", "_o_ctx", "_o_frame", "_o_values", "_o_exc", "_o_S", "_o_F", "_o_d0", "_o_a",
    "_o_k", "_o_x", "_o_m", "_o_wrapper", "_o_len", "_o_emit",
]  # fmt: skip
BUILTIN_NAMES = sorted(
    n for n in dir(builtins) if n.isidentifier() and not keyword.iskeyword(n) and n != "__debug__"
)
IDENTIFIERS = sorted(set(CODE_NAMES + BUILTIN_NAMES))
KINDS = ["function", "always", "coroutine", "generator", "async_generator"]
WHENS = ["success", "failure", "always", "start"]


def make_function(name: str, params: list[str], kind: str, hits: list[Any]) -> Any:
    """A function of *kind* with *params*, whose body appends its arguments to *hits* once."""
    signature = ", ".join([*params[:-1], f"{params[-1]}=-1"] if params else [])
    values = "".join(f"{p}, " for p in params)
    body = f"_t_hits.append(({values}))\n    "
    head = "async def" if kind in ("coroutine", "async_generator") else "def"
    if kind == "generator":
        body += f"yield ({values})\n    return ({values})"
    elif kind == "async_generator":
        body += f"yield ({values})"
    else:
        body += f"return ({values})"
    namespace: dict[str, Any] = {"_t_hits": hits}
    exec(f"{head} _t_fn({signature}):\n    {body}\n", namespace)
    fn = namespace["_t_fn"]
    fn.__name__ = fn.__qualname__ = name
    return fn


def call(decorated: Any, kind: str, args: tuple[Any, ...]) -> Any:
    """Call *decorated* as its kind is called; the result, or the items and return value."""
    if kind == "coroutine":
        return asyncio.run(decorated(*args))
    if kind == "generator":
        gen = decorated(*args)
        items = []
        try:
            while True:
                items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value
    if kind == "async_generator":

        async def drain() -> list[Any]:
            return [item async for item in decorated(*args)]

        return asyncio.run(drain())
    return decorated(*args)


@pytest.fixture
def audit_db() -> Iterator[sa.Engine]:
    """An in-memory SQLite database obs_sdk writes to and the test reads back."""
    engine = sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    yield engine
    obs.shutdown(10.0)
    engine.dispose()


def configure(engine: sa.Engine, **kwargs: Any) -> None:
    obs.configure(database=engine, **kwargs)


class TestNamesNeverShadowTheGeneratedCode:
    """User names stay out of the generated code's namespace (item 12)."""

    @pytest.mark.parametrize("name", ["len", "clock", "emit", "dispatcher", "current_context"])
    def test_a_function_named_like_the_generated_codes_globals_runs_once(
        self, audit_db: sa.Engine, name: str
    ) -> None:
        """The body runs once per call, the result is returned, one record is made per call:
        on the lane (worker running) and on the full path (capture()).

        The lane reads the clock live, so configure(clock=...) still stamps its records.
        """
        configure(audit_db, clock=lambda: 1_700_000_000_000_000_000)
        hits: list[Any] = []
        fn = make_function(name, ["item"], "function", hits)
        decorated = obs.audited("op", metadata={"item": "{item}"})(fn)
        with obs.scope(actor=USER):
            assert decorated([3]) == ([3],)
            with capture() as cap:
                assert decorated([4]) == ([4],)
        assert hits == [([3],), ([4],)]
        assert [a["metadata"] for a in cap.audits] == [{"item": [4]}]
        assert obs.flush(10.0)
        (record,) = obs.audit_log(audit_db)
        assert record.metadata == {"item": [3]}
        assert record.occurred_at.timestamp() == 1_700_000_000.0

    @pytest.mark.parametrize("name", ["class", "None", "lambda"])
    def test_a_keyword_as_name_decorates_and_the_name_is_kept(self, name: str) -> None:
        """A keyword as __name__ is only a name: kept by every kind of wrapper."""
        for kind in KINDS:
            hits: list[Any] = []
            fn = make_function(name, ["n"], kind, hits)
            when = "always" if kind == "always" else "success"
            decorated = obs.audited("op", when=when, metadata={"n": "{n}"})(fn)
            assert (decorated.__name__, decorated.__qualname__) == (name, name), kind
            with capture() as cap:
                call(decorated, kind, (5,))
            assert hits == [(5,)], kind
            assert [a["metadata"] for a in cap.audits] == [{"n": 5}], kind

    @settings(max_examples=60)
    @given(
        name=st.sampled_from(IDENTIFIERS) | st.sampled_from(keyword.kwlist),
        params=st.lists(st.sampled_from(IDENTIFIERS), unique=True, max_size=4),
        kind=st.sampled_from(KINDS),
    )
    def test_any_function_and_parameter_names(
        self, name: str, params: list[str], kind: str
    ) -> None:
        """Names from builtins, keywords and the generated code: the body runs exactly once,
        arguments and result pass through unchanged, and one record holds every argument."""
        engine = sa.create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        configure(engine)
        try:
            hits: list[Any] = []
            fn = make_function(name, params, kind, hits)
            when = "always" if kind == "always" else "success"
            metadata = {p: f"{{{p}}}" for p in params}
            decorated = obs.audited("op", when=when, metadata=metadata)(fn)
            args = tuple([i] for i in range(len(params)))  # lists: passed as the same objects
            with obs.scope(actor=USER):
                got = call(decorated, kind, args)
            expected = call(fn, kind, args)
            assert got == expected
            assert len(hits) == 2 and all(a is b for a, b in zip(hits[0], args, strict=True))
            assert obs.flush(10.0)
            records = obs.audit_log(engine)
            assert [r.metadata for r in records] == [dict(zip(params, args, strict=True))]
        finally:
            obs.shutdown(10.0)
            engine.dispose()


def factory(field: str) -> Callable[..., Any]:
    """The same qualname each time (``factory.<locals>.op``), with a different template."""

    @obs.audited("op", metadata={"f": field})
    def op(a: int, b: int) -> int:
        if a < 0:
            raise ValueError(a)
        return a + b

    return op


class TestReadableGeneratedCode:
    def test_each_wrapper_has_its_own_source_in_tracebacks(self) -> None:
        """Same qualname, different wrappers: each has a file name of its own, and a traceback
        through it shows the wrapper's own line, under the function's name."""
        first, second = factory("{a}"), factory("{b}")
        files = {first.__code__.co_filename, second.__code__.co_filename}
        assert len(files) == 2
        for op in (first, second):
            with pytest.raises(ValueError) as info:
                op(-1, 2)
            frames = traceback.extract_tb(info.value.__traceback__)
            (wrapper,) = [f for f in frames if f.filename == op.__code__.co_filename]
            assert wrapper.name == "op"
            assert wrapper.line is not None and "_o_func(" in wrapper.line


def bare_generator(a: int, b: int = 2) -> Iterator[int]:
    yield a
    yield b


async def bare_async_generator(a: int, b: int = 2) -> AsyncIterator[int]:
    yield a
    yield b


async def bare_coroutine(a: int, b: int = 2) -> int:
    return a + b


class TestArgumentsBindWhenCalled:
    """A wrong call raises TypeError at the call, as on the bare function (item 13)."""

    BAD_CALLS = (((), {}), ((1, 2, 3), {}), ((1,), {"c": 3}), ((1,), {"a": 1}))

    @pytest.mark.parametrize(
        ("bare", "when"),
        [
            *((bare_generator, when) for when in WHENS),
            *((bare_async_generator, when) for when in WHENS),
            # Success-only coroutines take the lane, which binds already; the others did not.
            *((bare_coroutine, when) for when in WHENS if when != "success"),
        ],
        ids=lambda v: getattr(v, "__name__", v),
    )
    def test_a_wrong_call_raises_at_call_time_and_records_nothing(
        self, bare: Any, when: str
    ) -> None:
        """Generators, async generators, coroutines: the same TypeError at the call, no record;
        and the wrapper is still a generator / async generator / coroutine function."""
        decorated = obs.audited("op", when=when, metadata={"a": "{a}"})(bare)
        assert inspect.isgeneratorfunction(decorated) == inspect.isgeneratorfunction(bare)
        assert inspect.isasyncgenfunction(decorated) == inspect.isasyncgenfunction(bare)
        assert inspect.iscoroutinefunction(decorated) == inspect.iscoroutinefunction(bare)
        for args, kwargs in self.BAD_CALLS:
            with pytest.raises(TypeError) as bare_error:
                bare(*args, **kwargs)
            with capture() as cap:
                with pytest.raises(TypeError) as wrapped_error:
                    decorated(*args, **kwargs)
            assert str(wrapped_error.value) == str(bare_error.value)
            assert cap.audits == []

    def test_a_generator_with_a_custom_signature_binds_by_its_code(self) -> None:
        """A documented __signature__ does not change binding: the code's own parameters do,
        at the call; the generator then runs and records as usual."""

        def rows(a: int, b: int) -> Iterator[int]:
            yield a + b

        rows.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("a", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        )
        decorated = obs.audited("rows", metadata={"a": "{a}"})(rows)
        with capture() as cap:
            with pytest.raises(TypeError) as wrapped_error:
                decorated(1)
            assert list(decorated(1, 2)) == [3]
        with pytest.raises(TypeError) as bare_error:
            rows(1)  # type: ignore[call-arg]
        assert str(wrapped_error.value) == str(bare_error.value)
        assert [a["metadata"] for a in cap.audits] == [{"a": 1}]


def documented(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


# What the function says it takes; what it really receives is whatever the caller passed.
documented.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1)]
)


class Adder:
    def __call__(self, a: int, b: int = 1) -> int:
        return a + b

    def add(self, a: int) -> int:
        return a + 10


def pair(a: int, b: int) -> tuple[int, int]:
    return a, b


# (label, callable, arguments, what "{result}" records): the call's result as undecorated.
ANY_CALLABLE: list[tuple[str, Any, tuple[Any, ...], Any]] = [
    ("max", max, (3, 9, 4), 9),
    ("min of a partial", functools.partial(min, 5), (3,), 3),
    ("itemgetter", operator.itemgetter(1), ([7, 8],), 8),
    ("type", type, (5,), "<class 'int'>"),
    ("len", len, ([1, 2],), 2),
    ("dict.get", dict.get, ({"k": 4}, "k"), 4),
    ("bound builtin", {"k": 6}.get, ("k",), 6),
    ("str.join", str.join, ("-", ["a", "b"]), "a-b"),
    ("partial", functools.partial(pair, 1), (2,), [1, 2]),
    ("callable instance", Adder(), (2,), 3),
    ("bound method", Adder().add, (2,), 12),
    ("class", Adder, (), None),  # an instance: recorded as its text, with an address
]


class TestAnyCallable:
    """Decorating never changes a call, and any callable can be decorated (item 14)."""

    def test_a_custom_signature_never_changes_the_call(self) -> None:
        """The callable gets exactly what the caller passed: no default filled in, no keyword
        refused; templates still read the signature's names (its defaults applied)."""
        calls = [((), {}), ((5,), {}), ((), {"y": 2}), ((1, 2), {"z": 3})]
        for when in ("success", "always"):
            decorated = obs.audited("op", when=when, metadata={"x": "{x}"})(documented)
            with capture() as cap:
                for args, kwargs in calls:
                    assert decorated(*args, **kwargs) == documented(*args, **kwargs), when
            metadata = [a["metadata"] for a in cap.audits]
            assert metadata == [{"x": 1}, {"x": 5}, {"x": 1}, {"x": 1}], when

    def test_any_callable_can_be_decorated(self, audit_db: sa.Engine) -> None:
        """Builtins, partials, descriptors, instances, classes: the call's result unchanged,
        one record each, {result} in it (on the lane: the worker is running)."""
        configure(audit_db)
        with obs.scope(actor=USER):
            for label, target, args, _ in ANY_CALLABLE:
                decorated = obs.audited(label, metadata={"result": "{result}"})(target)
                expected = target(*args)
                got = decorated(*args)
                assert type(got) is type(expected), label
                assert isinstance(got, Adder) or got == expected, label
        assert obs.flush(10.0)
        records = obs.audit_log(audit_db, order="asc")
        assert [r.action for r in records] == [c[0] for c in ANY_CALLABLE]
        assert [r.metadata["result"] for r in records[:-1]] == [c[3] for c in ANY_CALLABLE[:-1]]
        assert records[-1].metadata["result"].startswith("<tests.scenarios.")

    @pytest.mark.parametrize(
        "target", [max, operator.itemgetter(0), functools.partial(max, 0)], ids=repr
    )
    def test_an_argument_template_without_a_signature_says_which_field_and_why(
        self, target: Any
    ) -> None:
        """No inspectable signature: a ConfigurationError naming the field and the reason."""
        with pytest.raises(obs.ConfigurationError) as info:
            obs.audited("op", metadata={"first": "{a}"})(target)
        message = str(info.value)
        assert "metadata.first" in message
        assert "{a}" in message
        assert "signature" in message
