"""@audited: every kind of function, when=, templates, emit_if, and decoration-time errors."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine

import obs_sdk as obs
from obs_sdk.testing import capture

USER = obs.Actor.user("u_1", name="Ada", email="ada@example.com")


@dataclass
class File:
    id: str
    name: str
    size: int


class Boom(Exception):
    """The user's own exception, which must pass through unchanged."""


def outcomes(cap: Any) -> list[tuple[str, str, str | None]]:
    return [(a["action"], a["outcome"], a["error_type"]) for a in cap.audits]


class TestPreservesTheFunction:
    def test_name_doc_signature_wrapped(self) -> None:
        """The wrapper keeps name, docstring, signature and __wrapped__ of the original."""

        def download(file_id: str, *, inline: bool = False) -> File:
            """Download a file."""
            return File(file_id, "a", 1)

        wrapped = obs.audited("file.downloaded")(download)
        assert wrapped.__name__ == "download"
        assert wrapped.__doc__ == "Download a file."
        assert wrapped.__wrapped__ is download  # type: ignore[attr-defined]
        assert inspect.signature(wrapped) == inspect.signature(download)

    def test_coroutine_and_generator_kinds_are_kept(self) -> None:
        """Async functions stay coroutine functions; generators stay generator functions."""

        async def a() -> None: ...

        def g() -> Iterator[int]:
            yield 1

        async def ag() -> AsyncIterator[int]:
            yield 1

        assert inspect.iscoroutinefunction(obs.audited("x")(a))
        assert inspect.isgeneratorfunction(obs.audited("x")(g))
        assert inspect.isasyncgenfunction(obs.audited("x")(ag))


class TestWhen:
    def test_success_only_by_default(self) -> None:
        """A raising call writes no record by default; its exception is the same object."""
        error = Boom("no")

        @obs.audited("file.downloaded")
        def download(ok: bool) -> str:
            if not ok:
                raise error
            return "data"

        with capture() as cap:
            assert download(True) == "data"
            with pytest.raises(Boom) as info:
                download(False)
        assert info.value is error
        assert outcomes(cap) == [("file.downloaded", "success", None)]

    @pytest.mark.parametrize(
        ("when", "expected"),
        [
            ("success", [("success", None)]),
            ("failure", [("failure", "Boom")]),
            ("always", [("success", None), ("failure", "Boom")]),
            ("start", [("started", None), ("started", None)]),
        ],
    )
    def test_when(self, when: str, expected: list[tuple[str, str | None]]) -> None:
        """when= selects which outcomes are recorded, with error_type for failures."""

        @obs.audited("op", when=when)
        def op(ok: bool) -> None:
            if not ok:
                raise Boom

        with capture() as cap:
            op(True)
            with pytest.raises(Boom):
                op(False)
        assert [(a["outcome"], a["error_type"]) for a in cap.audits] == expected

    def test_start_records_before_the_body_runs(self) -> None:
        """when="start" leaves a trail before the body runs (egress: even a crash leaves one)."""
        seen_during_call: list[int] = []

        with capture() as cap:

            @obs.audited("export.started", when="start", resource=obs.Resource("export", "{eid}"))
            def export(eid: str) -> None:
                seen_during_call.append(len(cap.audits))
                raise Boom

            with pytest.raises(Boom):
                export("e1")
        assert seen_during_call == [1]
        assert cap.audits[0]["resource_id"] == "e1"

    async def test_async_functions_record_after_completion(self) -> None:
        """An async function is recorded when it completed, not when the coroutine was made."""

        @obs.audited("op", when="always")
        async def op(ok: bool) -> int:
            await asyncio.sleep(0)
            if not ok:
                raise Boom
            return 7

        with capture() as cap:
            coroutine = op(True)
            assert cap.audits == []
            assert await coroutine == 7
            with pytest.raises(Boom):
                await op(False)
        assert [a["outcome"] for a in cap.audits] == ["success", "failure"]

    def test_base_exceptions_flow_through_unrecorded(self) -> None:
        """KeyboardInterrupt-like BaseExceptions are neither caught nor recorded."""

        @obs.audited("op", when="always")
        def op() -> None:
            raise KeyboardInterrupt

        with capture() as cap, pytest.raises(KeyboardInterrupt):
            op()
        assert cap.audits == []


class TestGenerators:
    def test_exhausted_is_success_with_the_return_value(self) -> None:
        """A generator records success when exhausted; {result} is its return value."""

        @obs.audited("rows.exported", metadata={"count": "{result}"})
        def rows(n: int) -> Iterator[int]:
            yield from range(n)
            return n

        with capture() as cap:
            gen = rows(3)
            assert cap.audits == []
            assert list(gen) == [0, 1, 2]
        assert cap.audits[0]["metadata"] == {"count": 3}

    def test_raising_generator_is_failure(self) -> None:
        """A generator that raises records a failure and re-raises the same exception."""

        @obs.audited("rows.exported", when="failure")
        def rows() -> Iterator[int]:
            yield 1
            raise Boom

        with capture() as cap, pytest.raises(Boom):
            list(rows())
        assert outcomes(cap) == [("rows.exported", "failure", "Boom")]

    def test_closed_early_is_a_failure_with_generator_exit_under_always(self) -> None:
        """Closing a generator early records GeneratorExit under when="always" only."""

        @obs.audited("always", when="always")
        def always() -> Iterator[int]:
            yield from range(10)

        @obs.audited("success")
        def success() -> Iterator[int]:
            yield from range(10)

        with capture() as cap:
            for gen in (always(), success()):
                next(gen)
                gen.close()
        assert outcomes(cap) == [("always", "failure", "GeneratorExit")]

    def test_start_records_at_first_next(self) -> None:
        """For a generator, when="start" records at the first next(), not at creation."""

        @obs.audited("download.started", when="start")
        def stream() -> Iterator[bytes]:
            yield b"chunk"

        with capture() as cap:
            gen = stream()
            assert cap.audits == []
            next(gen)
            assert [a["outcome"] for a in cap.audits] == ["started"]

    def test_send_and_throw_reach_the_generator(self) -> None:
        """send() and throw() are delivered to the wrapped generator as if undecorated."""

        @obs.audited("echo", when="always")
        def echo() -> Iterator[Any]:
            received = None
            while True:
                try:
                    received = yield received
                except Boom:
                    received = "caught"

        gen = echo()
        with capture() as cap:
            next(gen)
            assert gen.send("hi") == "hi"
            assert gen.throw(Boom) == "caught"
            gen.close()
        assert outcomes(cap) == [("echo", "failure", "GeneratorExit")]

    async def test_async_generators(self) -> None:
        """Async generators record success when exhausted and failure when they raise."""

        @obs.audited("stream", when="always")
        async def stream(fail: bool) -> AsyncIterator[int]:
            yield 1
            if fail:
                raise Boom
            yield 2

        with capture() as cap:
            assert [x async for x in stream(False)] == [1, 2]
            with pytest.raises(Boom):
                async for _ in stream(True):
                    pass
            gen = stream(False)
            await gen.__anext__()
            await gen.aclose()
        assert [(a["outcome"], a["error_type"]) for a in cap.audits] == [
            ("success", None),
            ("failure", "Boom"),
            ("failure", "GeneratorExit"),
        ]

    async def test_async_generator_asend_and_athrow(self) -> None:
        """asend() and athrow() reach the wrapped async generator."""

        @obs.audited("echo")
        async def echo() -> AsyncIterator[Any]:
            received = None
            while received != "stop":
                try:
                    received = yield received
                except Boom:
                    received = "caught"

        gen = echo()
        assert await gen.asend(None) is None
        assert await gen.asend("x") == "x"
        assert await gen.athrow(Boom) == "caught"
        with pytest.raises(StopAsyncIteration):
            await gen.asend("stop")


class Files:
    """Methods decorated on either side of classmethod and staticmethod."""

    prefix = "f"

    @obs.audited("instance", resource=obs.Resource("file", "{file_id}"))
    def instance(self, file_id: str) -> str:
        return f"{self.prefix}{file_id}"

    @obs.audited("above_class", resource=obs.Resource("file", "{file_id}"))
    @classmethod
    def above_class(cls, file_id: str) -> str:
        return f"{cls.prefix}{file_id}"

    @classmethod
    @obs.audited("below_class", resource=obs.Resource("file", "{file_id}"))
    def below_class(cls, file_id: str) -> str:
        return f"{cls.prefix}{file_id}"

    @obs.audited("above_static", resource=obs.Resource("file", "{file_id}"))
    @staticmethod
    def above_static(file_id: str) -> str:
        return file_id

    @staticmethod
    @obs.audited("below_static", resource=obs.Resource("file", "{file_id}"))
    def below_static(file_id: str) -> str:
        return file_id

    @obs.audited("async_method", resource=obs.Resource("file", "{file_id}"))
    async def async_method(self, file_id: str) -> str:
        return file_id


class TestMethods:
    def test_every_method_kind_binds_and_resolves_templates(self) -> None:
        """Instance, class and static methods work with the decorator above or below."""
        files = Files()
        with capture() as cap:
            assert files.instance("1") == "f1"
            assert Files.above_class("2") == files.above_class("2") == "f2"
            assert Files.below_class("3") == "f3"
            assert Files.above_static("4") == files.above_static("4") == "4"
            assert Files.below_static("5") == "5"
            assert asyncio.run(files.async_method("6")) == "6"
        assert [(a["action"], a["resource_id"]) for a in cap.audits] == [
            ("instance", "1"),
            ("above_class", "2"),
            ("above_class", "2"),
            ("below_class", "3"),
            ("above_static", "4"),
            ("above_static", "4"),
            ("below_static", "5"),
            ("async_method", "6"),
        ]

    def test_method_signatures_are_the_originals(self) -> None:
        """inspect.signature of a bound decorated method hides self/cls like the original."""
        assert str(inspect.signature(Files().instance)) == "(file_id: 'str') -> 'str'"
        assert str(inspect.signature(Files.above_class)) == "(file_id: 'str') -> 'str'"
        assert str(inspect.signature(Files.above_static)) == "(file_id: 'str') -> 'str'"


class TestTemplates:
    def test_single_field_keeps_type_and_mixed_renders_text(self) -> None:
        """ "{result.size}" stays an int; "{a}-{b}" becomes a string."""

        @obs.audited(
            "file.downloaded",
            resource=obs.Resource("file", "{file_id}", name="{result.name}"),
            metadata={"bytes": "{result.size}", "label": "{file_id}-{result.size:05d}", "k": 3},
        )
        def download(file_id: str) -> File:
            return File(file_id, "report.pdf", 2048)

        with capture() as cap:
            download("f_1")
        record = cap.audits[0]
        assert (record["resource_type"], record["resource_id"], record["resource_name"]) == (
            "file",
            "f_1",
            "report.pdf",
        )
        assert record["metadata"] == {"bytes": 2048, "label": "f_1-02048", "k": 3}

    def test_defaults_keyword_only_varargs_and_item_lookups(self) -> None:
        """Fields resolve from positional, keyword, default, *args, **kwargs and [item] lookups."""

        @obs.audited(
            "op",
            metadata={
                "a": "{a}",
                "b": "{b}",
                "c": "{c}",
                "rest": "{rest}",
                "opt": "{options[mode]}",
                "first": "{options[payload][items][0]}",
            },
        )
        def op(a: int, b: int = 2, *rest: int, c: str = "C", **options: Any) -> None:
            del a, b, rest, c, options

        with capture() as cap:
            op(1, mode="fast", payload={"items": ["x", "y"]})
            op(1, 5, 6, 7, c="z", mode="slow", payload={"items": ["q"]})
        assert [a["metadata"] for a in cap.audits] == [
            {"a": 1, "b": 2, "c": "C", "rest": [], "opt": "fast", "first": "x"},
            {"a": 1, "b": 5, "c": "z", "rest": [6, 7], "opt": "slow", "first": "q"},
        ]

    def test_callables_receive_the_call(self) -> None:
        """Callable fields and a whole-metadata callable get .args, .result and .exception."""
        calls: list[obs_call] = []

        def whole(call: obs_call) -> dict[str, Any]:
            calls.append(call)
            return {"n": call.args["n"], "doubled": call.result, "err": repr(call.exception)}

        @obs.audited(
            "op", resource=obs.Resource("thing", lambda call: f"t{call.args['n']}"), metadata=whole
        )
        def op(n: int, scale: int = 2) -> int:
            return n * scale

        with capture() as cap:
            op(4)
        assert cap.audits[0]["resource_id"] == "t4"
        assert cap.audits[0]["metadata"] == {"n": 4, "doubled": 8, "err": "None"}
        assert dict(calls[0].args) == {"n": 4, "scale": 2}

    def test_failure_records_see_the_exception(self) -> None:
        """A failure record's callable fields receive the exception and no result."""

        @obs.audited("op", when="failure", metadata=lambda call: {"why": str(call.exception)})
        def op() -> None:
            raise Boom("disk full")

        with capture() as cap, pytest.raises(Boom):
            op()
        assert cap.audits[0]["metadata"] == {"why": "disk full"}

    def test_result_is_null_in_failure_records_under_always(self) -> None:
        """Under when="always" a {result...} field is NULL in failure records."""

        @obs.audited("op", when="always", metadata={"size": "{result.size}"})
        def op(ok: bool) -> File:
            if not ok:
                raise Boom
            return File("f", "n", 5)

        with capture() as cap:
            op(True)
            with pytest.raises(Boom):
                op(False)
        assert [a["metadata"] for a in cap.audits] == [{"size": 5}, {"size": None}]

    def test_mutating_the_result_after_return_does_not_change_the_record(self) -> None:
        """Values are copied at return: obs_sdk never reads a user object afterwards."""
        tags = ["a"]

        @obs.audited("op", metadata={"tags": "{result}"})
        def op() -> list[str]:
            return tags

        with capture() as cap:
            op()
            tags.append("b")
        assert cap.audits[0]["metadata"] == {"tags": ["a"]}

    @pytest.mark.swallows_internal_errors
    def test_a_failing_field_is_null_and_counted(self, sqlite_url: str) -> None:
        """A template or callable that fails at call time records NULL, is counted, never raises."""
        obs.configure(database=sqlite_url)

        class Broken:
            @property
            def name(self) -> str:
                raise RuntimeError("lazy load failed")

        @obs.audited(
            "op",
            resource=obs.Resource("file", "{result.name}"),
            metadata={"x": lambda call: 1 / 0, "ok": "fine"},
        )
        def op() -> Broken:
            return Broken()

        with capture() as cap:
            assert isinstance(op(), Broken)
        assert cap.audits[0]["resource_id"] is None
        assert cap.audits[0]["metadata"] == {"x": None, "ok": "fine"}
        assert obs.stats()["internal_errors"] == 2

    @given(st.one_of(st.integers(), st.text(), st.none(), st.floats(allow_nan=False), st.binary()))
    def test_any_value_renders_without_raising(self, value: object) -> None:
        """Whatever a field resolves to, a record is made and the caller gets its value."""

        @obs.audited("op", metadata={"v": "{value}", "text": "<{value}>"})
        def op(value: object) -> object:
            return value

        with capture() as cap:
            assert op(value) == value
        assert len(cap.audits) == 1

    @pytest.mark.swallows_internal_errors
    def test_a_broken_repr_never_reaches_the_caller(self) -> None:
        """An object whose __str__ and __repr__ raise still yields a record."""

        class Nasty:
            def __str__(self) -> str:
                raise RuntimeError("no str")

            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        @obs.audited("op", metadata={"v": "{thing}"})
        def op(thing: object) -> str:
            return "ok"

        with capture() as cap:
            assert op(Nasty()) == "ok"
        assert cap.audits[0]["metadata"]["v"].startswith("<")


obs_call = Any  # the Call type is reached only through callables


class TestEmitIf:
    def test_false_drops_the_record(self) -> None:
        """emit_if returning False drops the record (a no-op export), True keeps it."""

        @obs.audited("export", emit_if=lambda call: call.result > 0)
        def export(n: int) -> int:
            return n

        with capture() as cap:
            export(0)
            export(3)
        assert len(cap.audits) == 1

    @pytest.mark.swallows_internal_errors
    def test_a_raising_predicate_keeps_the_record(self, sqlite_url: str) -> None:
        """If emit_if raises, the record is kept (a trail errs toward recording) and counted."""
        obs.configure(database=sqlite_url)

        @obs.audited("export", emit_if=lambda call: call.result["missing"])
        def export() -> dict[str, int]:
            return {}

        with capture() as cap:
            export()
        assert len(cap.audits) == 1
        assert obs.stats()["internal_errors"] == 1


class TestDecorationErrors:
    def test_missing_parameter_names_function_field_and_fix(self) -> None:
        """A template naming no parameter fails at decoration with the function and field."""
        with pytest.raises(obs.ConfigurationError) as info:

            @obs.audited("file.downloaded", resource=obs.Resource("file", "{fileid}"))
            def download(file_id: str) -> None: ...

        message = str(info.value)
        assert "download" in message
        assert "{fileid}" in message
        assert "file_id" in message

    @pytest.mark.parametrize("when", ["failure", "start"])
    def test_result_without_a_result(self, when: str) -> None:
        """{result...} under when="failure" or "start" is a ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="result"):

            @obs.audited("op", when=when, metadata={"s": "{result.size}"})
            def op() -> None: ...

    def test_unknown_when(self) -> None:
        """An unknown when= lists the allowed values."""
        with pytest.raises(obs.ConfigurationError, match="'success', 'failure', 'always', 'start'"):

            @obs.audited("op", when="sometimes")
            def op() -> None: ...

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"resource": ("file", "1")}, "obs.Resource"),
            ({"metadata": ["a"]}, "dict or a callable"),
            ({"emit_if": True}, "emit_if"),
            ({"metadata": {"x": "{0}"}}, "name a parameter"),
            ({"metadata": {"x": "{a"}}, "not a valid format string"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, Any], match: str) -> None:
        """Bad decorator arguments are ConfigurationErrors (also ValueErrors) saying what to fix."""
        with pytest.raises(ValueError, match=match):

            @obs.audited("op", **kwargs)
            def op(a: int) -> None: ...

    def test_action_is_required(self) -> None:
        """An empty action name is refused."""
        with pytest.raises(obs.ConfigurationError, match="action"):
            obs.audited("")


def bare(x: Any, fail: bool) -> Any:
    if fail:
        raise Boom(x)
    return x


class TestTransparency:
    @given(st.one_of(st.integers(), st.text(), st.lists(st.integers())), st.booleans())
    def test_sync_returns_or_raises_exactly_what_the_bare_function_does(
        self, x: Any, fail: bool
    ) -> None:
        """A decorated function returns the same object or raises the same exception."""
        decorated = obs.audited("op", when="always", metadata={"x": "{x}"})(bare)
        with capture():
            try:
                expected: Any = bare(x, fail)
            except Boom as exc:
                expected = exc
            try:
                got: Any = decorated(x, fail)
            except Boom as exc:
                got = exc
        assert type(got) is type(expected)
        assert got == expected or (isinstance(got, Boom) and got.args == expected.args)

    @given(st.lists(st.integers(), max_size=5), st.booleans())
    def test_generators_yield_exactly_what_the_bare_generator_does(
        self, items: list[int], fail: bool
    ) -> None:
        """A decorated generator yields the same items and raises the same way."""

        def gen(xs: list[int], fail: bool) -> Iterator[int]:
            yield from xs
            if fail:
                raise Boom
            return len(xs)

        decorated = obs.audited("op", when="always")(gen)

        def run(g: Iterator[int]) -> tuple[list[int], Any]:
            out: list[int] = []
            try:
                while True:
                    out.append(next(g))
            except StopIteration as stop:
                return out, stop.value
            except Boom:
                return out, "boom"

        with capture():
            assert run(decorated(items, fail)) == run(gen(items, fail))

    @given(st.integers(), st.booleans())
    def test_async_returns_or_raises_exactly_what_the_bare_coroutine_does(
        self, x: int, fail: bool
    ) -> None:
        """A decorated coroutine function returns or raises exactly like the bare one."""

        async def coro(x: int, fail: bool) -> int:
            if fail:
                raise Boom(x)
            return x

        decorated = obs.audited("op", when="always")(coro)

        async def outcome(fn: Any) -> Any:
            try:
                return await fn(x, fail)
            except Boom as exc:
                return ("boom", exc.args)

        with capture():
            assert asyncio.run(outcome(decorated)) == asyncio.run(outcome(coro))


class TestConfiguredPath:
    """With the worker running, sync success records skip emit(); the rules must not change."""

    @pytest.mark.swallows_internal_errors
    def test_suppression_templates_and_failing_fields(self, sqlite_url: str) -> None:
        """Suppressed calls record nothing; fields resolve; a failing field is NULL and counted."""
        obs.configure(database=sqlite_url)

        @obs.audited("op", resource=obs.Resource("file", "{file.id}"), metadata={"n": "{n}"})
        def op(file: Any, n: int = 3) -> None: ...

        with obs.scope(actor=USER, organization="org_1"):
            with obs.suppressed():
                op(File("f_0", "a", 1))
            op(File("f_1", "b", 2))
            op(None, n=4)  # None.id fails: that field alone is NULL
        assert obs.flush(5.0)
        records = obs.audit_log(create_engine(sqlite_url), order="asc")
        assert [(r.resource_id, r.metadata, r.actor_id) for r in records] == [
            ("f_1", {"n": 3}, "u_1"),
            (None, {"n": 4}, "u_1"),
        ]
        assert obs.stats()["submitted"] == 2
        assert obs.stats()["internal_errors"] == 1

    def test_analytics_from_unidentified_actors_still_need_the_opt_in(
        self, sqlite_url: str
    ) -> None:
        """An anonymous caller's tracked call sends nothing on the configured path either."""
        sent: list[tuple[str, Any]] = []

        class Client:
            """Records captures in memory; the real client is tested in integration/posthog."""

            def capture(self, event: str, **kwargs: Any) -> None:
                sent.append((event, kwargs["distinct_id"]))

            def flush(self, timeout_seconds: float | None = None) -> None: ...

        obs.configure(database=sqlite_url, posthog=Client())

        @obs.tracked("viewed", properties={"page": "{page}"})
        def view(page: str) -> None: ...

        with obs.scope(actor=obs.Actor.anonymous("ph_1")):
            view("home")
        with obs.scope(actor=USER):
            view("pricing")
        assert obs.flush(5.0)
        assert sent == [("viewed", "u_1")]


DEFAULT_TAGS: list[str] = []  # a mutable default: the wrapper must pass this very object


def every_kind(
    a: int, b: Any = DEFAULT_TAGS, /, c: int = 3, *rest: int, d: str, **extra: Any
) -> Any:
    return a, b, c, rest, d, extra


def shadowing(clock: int, emit: str = "e", type: str = "t") -> Any:  # names the lane reads
    return clock, emit, type


class TestOwnSignatureWrapper:
    """The sync wrapper takes the function's own parameters; calls behave as on the bare one."""

    METADATA: ClassVar = {"a": "{a}", "c": "{c}", "rest": "{rest}", "d": "{d}", "extra": "{extra}"}

    @pytest.mark.parametrize(
        "args, kwargs",
        [((1,), {"d": "x"}), ((1, ["t"], 5, 6, 7), {"d": "y", "z": 9}), ((1,), {"c": 4, "d": "w"})],
    )
    def test_returns_what_the_bare_function_returns_and_records_each_kind(
        self, sqlite_url: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Positional-only, defaults (the same object), *args, keyword-only and **kwargs."""
        obs.configure(database=sqlite_url)
        decorated = obs.audited("op", metadata=self.METADATA)(every_kind)
        with obs.scope(actor=USER):
            got = decorated(*args, **kwargs)
        expected = every_kind(*args, **kwargs)
        assert got == expected and got[1] is expected[1]
        assert obs.flush(5.0)
        (record,) = obs.audit_log(create_engine(sqlite_url))
        a, _, c, rest, d, extra = expected
        assert record.metadata == {"a": a, "c": c, "rest": list(rest), "d": d, "extra": extra}

    @pytest.mark.parametrize(
        "args, kwargs",
        [((), {"d": "x"}), ((1,), {}), ((), {"a": 1, "d": "x"}), ((1, 2, 3), {"d": "x", "c": 1})],
    )
    def test_a_bad_call_raises_the_bare_functions_type_error(
        self, sqlite_url: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Missing, duplicate or misplaced arguments: the same TypeError, the same message."""
        obs.configure(database=sqlite_url)
        decorated = obs.audited("op")(every_kind)
        with pytest.raises(TypeError) as bare_error:
            every_kind(*args, **kwargs)
        with pytest.raises(TypeError) as wrapped_error:
            decorated(*args, **kwargs)
        assert str(wrapped_error.value) == str(bare_error.value)
        assert obs.stats()["submitted"] == 0

    def test_parameters_named_like_the_wrappers_own_names(self, sqlite_url: str) -> None:
        """clock, emit, type: parameters the lane's names would clash with still record."""
        obs.configure(database=sqlite_url)
        decorated = obs.audited("op", metadata={"clock": "{clock}", "type": "{type}"})(shadowing)
        with obs.scope(actor=USER):
            assert decorated(5, type="T") == (5, "e", "T")
        assert obs.flush(5.0)
        (record,) = obs.audit_log(create_engine(sqlite_url))
        assert record.metadata == {"clock": 5, "type": "T"}

    def test_a_wrapper_that_borrows_a_signature_keeps_its_own(self, sqlite_url: str) -> None:
        """functools.wraps shows the inner signature; the outer callable's arguments still work."""

        def inner(x: int) -> int:
            return x

        @functools.wraps(inner)
        def retrying(*args: Any, retries: int = 1, **kwargs: Any) -> Any:
            return inner(*args, **kwargs) * retries

        obs.configure(database=sqlite_url)
        decorated = obs.audited("op", metadata={"x": "{x}"})(retrying)
        with obs.scope(actor=USER):
            assert decorated(2, retries=3) == 6
        assert obs.flush(5.0)
        (record,) = obs.audit_log(create_engine(sqlite_url))
        assert record.metadata == {"x": 2}

    def test_coroutine_functions_take_the_same_wrapper(self, sqlite_url: str) -> None:
        """An async function's wrapper is a coroutine function with its own parameters too."""

        async def fetch(file_id: str, *, size: int = 1) -> str:
            await asyncio.sleep(0)
            return f"{file_id}:{size}"

        obs.configure(database=sqlite_url)
        decorated = obs.audited("op", metadata={"id": "{file_id}", "size": "{size}"})(fetch)
        assert inspect.iscoroutinefunction(decorated)
        assert inspect.signature(decorated) == inspect.signature(fetch)

        async def calls() -> list[str]:
            with obs.scope(actor=USER):
                return [await decorated("f_1"), await decorated("f_2", size=3)]

        assert asyncio.run(calls()) == ["f_1:1", "f_2:3"]
        with pytest.raises(TypeError) as bare_error:
            fetch()  # type: ignore[call-arg]
        with pytest.raises(TypeError) as wrapped_error:
            decorated()
        assert str(wrapped_error.value) == str(bare_error.value)
        assert obs.flush(5.0)
        records = obs.audit_log(create_engine(sqlite_url), order="asc")
        assert [r.metadata for r in records] == [{"id": "f_1", "size": 1}, {"id": "f_2", "size": 3}]


class TestWithoutAScope:
    """No scope open: the compiled wrapper records an anonymous actor, or nothing if suppressed."""

    def test_anonymous_records_and_suppression_without_a_scope(self, sqlite_url: str) -> None:
        sent: list[str] = []

        class Client:
            """Records captures in memory; the real client is tested in integration/posthog."""

            def capture(self, event: str, **kwargs: Any) -> None:
                sent.append(event)

            def flush(self, timeout_seconds: float | None = None) -> None: ...

        obs.configure(database=sqlite_url, posthog=Client())

        @obs.audited("job.ran", metadata={"n": "{n}"})
        def job(n: int) -> int:
            return n

        @obs.tracked("job.viewed")
        def view() -> None: ...

        assert obs.current_scope().actor is None
        assert job(1) == 1
        view()  # an anonymous caller: no event without allow_anonymous
        with obs.suppressed():
            job(2)
        assert obs.flush(5.0)
        records = obs.audit_log(create_engine(sqlite_url))
        assert [(r.actor_type, r.actor_id, r.metadata) for r in records] == [
            ("anonymous", None, {"n": 1})
        ]
        assert sent == []


class TestTenant:
    """organization= / workspace=: templates over the call that win over the scope (issue 14)."""

    def test_every_wrapper_kind_resolves_the_tenant(self, sqlite_url: str) -> None:
        """The compiled sync and async wrappers, generators and failure records alike."""
        obs.configure(database=sqlite_url)

        @obs.audited("sync", organization="{org}")
        def sync(org: str) -> None: ...

        @obs.audited("async", organization="{org}", workspace="ws_{org}")
        async def coroutine(org: str) -> None:
            await asyncio.sleep(0)

        @obs.audited("generator", organization="{org}")
        def generator(org: str) -> Iterator[int]:
            yield 1

        @obs.audited("failed", organization="{org}", when="failure")
        def failing(org: str) -> None:
            raise Boom(org)

        with obs.scope(actor=USER, workspace="ws_scope", organization="org_scope"):
            sync("o_1")
            asyncio.run(coroutine("o_2"))
            assert list(generator("o_3")) == [1]
            with pytest.raises(Boom):
                failing("o_4")
        assert obs.flush(5.0)
        records = obs.audit_log(create_engine(sqlite_url))
        assert sorted((r.action, r.organization_id, r.workspace_id) for r in records) == [
            ("async", "o_2", "ws_o_2"),
            ("failed", "o_4", None),
            ("generator", "o_3", None),
            ("sync", "o_1", None),
        ]

    def test_tenant_templates_are_checked_when_decorating(self) -> None:
        """A missing parameter, or a result under when="start", names the field."""
        with pytest.raises(obs.ConfigurationError, match="workspace template"):
            obs.audited("op", workspace="{nope}")(lambda org: None)
        with pytest.raises(obs.ConfigurationError, match="organization template"):
            obs.tracked("op", organization="{result.org}", when="start")(lambda: None)

    def test_record_audit_takes_strings_only(self) -> None:
        """record_audit/track take plain values: anything but a string or None is refused."""
        with pytest.raises(obs.ConfigurationError, match="organization= takes a string"):
            obs.record_audit("op", organization=42)  # type: ignore[arg-type]
        with pytest.raises(obs.ConfigurationError, match="workspace= takes a string"):
            obs.track("op", workspace=["ws"])  # type: ignore[arg-type]
