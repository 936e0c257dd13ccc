"""Scope: merge rules, restoration, isolation across tasks and threads, providers."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage
from opentelemetry import context as otel_context

import obs_sdk as obs
from obs_sdk.testing import capture


@obs.audited("thing.done")
def do_thing() -> None:
    """A decorated no-op."""


class TestActor:
    def test_constructors_set_type_and_never_invent_ids(self) -> None:
        """Each Actor constructor fills type and id as SPEC says; system/anonymous get no id."""
        assert obs.Actor.user("u_1", name="Ada", email="a@x") == obs.Actor(
            "user", "u_1", "Ada", "a@x"
        )
        assert obs.Actor.service("key_1", name="CI").type == "service"
        system = obs.Actor.system("cron")
        assert (system.type, system.id, system.name) == ("system", None, "cron")
        anon = obs.Actor.anonymous("ph_123")
        assert (anon.type, anon.id, anon.distinct_id) == ("anonymous", None, "ph_123")

    @pytest.mark.parametrize("bad", ["", None, 42])
    def test_user_needs_a_string_id(self, bad: object) -> None:
        """A user without a usable id is a configuration error that says what is needed."""
        with pytest.raises(obs.ConfigurationError, match="non-empty string id"):
            obs.Actor.user(bad)  # type: ignore[arg-type]


class TestMerge:
    def test_inner_values_win_and_outer_values_stay(self) -> None:
        """A nested scope overrides what it sets and inherits the rest."""
        ada = obs.Actor.user("u_1")
        with obs.scope(actor=ada, ip="1.1.1.1", request_id="r1"):
            with obs.scope(ip="2.2.2.2") as inner:
                assert inner == obs.current_scope()
                assert (inner.actor, inner.ip, inner.request_id) == (ada, "2.2.2.2", "r1")
            assert obs.current_scope().ip == "1.1.1.1"

    def test_workspace_and_organization_are_one_unit(self) -> None:
        """An inner scope that sets a workspace drops the outer organization (no stale org)."""
        with obs.scope(workspace="ws_team", organization="org_1"):
            with obs.scope(workspace="ws_personal"):
                s = obs.current_scope()
                assert (s.workspace, s.organization) == ("ws_personal", None)
            with obs.scope(organization="org_2"):
                s = obs.current_scope()
                assert (s.workspace, s.organization) == (None, "org_2")
            with obs.scope(ip="9.9.9.9"):
                s = obs.current_scope()
                assert (s.workspace, s.organization) == ("ws_team", "org_1")

    def test_restored_exactly_when_the_body_raises(self) -> None:
        """Leaving a scope by an exception restores the previous scope exactly."""
        with obs.scope(actor=obs.Actor.user("outer")):
            before = obs.current_scope()
            with pytest.raises(KeyError), obs.scope(actor=obs.Actor.user("inner")):
                raise KeyError("boom")
            assert obs.current_scope() == before
        assert obs.current_scope() == obs.Scope()

    @given(
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "workspace": st.sampled_from(["w1", "w2"]),
                    "organization": st.sampled_from(["o1", "o2"]),
                    "ip": st.sampled_from(["1.1.1.1", "::1"]),
                    "request_id": st.text(min_size=1, max_size=5),
                },
            ),
            max_size=6,
        )
    )
    def test_any_nesting_restores_every_level(self, levels: list[dict[str, str]]) -> None:
        """For any stack of scopes, each level sees the SPEC merge and exits restore it."""

        def expected(stack: list[dict[str, str]]) -> obs.Scope:
            merged = obs.Scope()
            for level in stack:
                merged = merged.merged(obs.Scope(**level))
            return merged

        def enter(i: int) -> None:
            if i == len(levels):
                return
            with obs.scope(**levels[i]):  # type: ignore[arg-type]
                assert obs.current_scope() == expected(levels[: i + 1])
                enter(i + 1)
                assert obs.current_scope() == expected(levels[: i + 1])

        enter(0)
        assert obs.current_scope() == obs.Scope()

    def test_scope_is_not_in_baggage(self) -> None:
        """The scope lives under a private context key, so it never leaks into baggage headers."""
        with obs.scope(actor=obs.Actor.user("u_1"), organization="org_1"):
            assert baggage.get_all() == {}

    def test_bad_field_types_fail_loudly(self) -> None:
        """A non-Actor actor or a non-string field is a ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match=r"obs\.Actor"):
            obs.scope(actor="u_1")  # type: ignore[arg-type]
        with pytest.raises(obs.ConfigurationError, match="workspace"):
            obs.scope(workspace=7)  # type: ignore[arg-type]


class TestSetActor:
    def test_applies_to_later_records_of_the_scope_only(self) -> None:
        """set_actor() changes the actor of records made after it, not before, not outside."""
        with capture() as cap:
            with obs.scope(actor=obs.Actor.anonymous(), request_id="r1"):
                do_thing()
                obs.set_actor(obs.Actor.user("u_9"))
                do_thing()
            with obs.scope(request_id="r2"):
                do_thing()
        assert [(a["actor_type"], a["actor_id"]) for a in cap.audits] == [
            ("anonymous", None),
            ("user", "u_9"),
            ("anonymous", None),
        ]

    def test_a_copied_context_keeps_the_actor_it_was_copied_with(self) -> None:
        """set_actor() changes this context and what it starts afterwards, never a context
        copied before (a child task or thread started earlier keeps its own actor)."""
        with obs.scope(actor=obs.Actor.anonymous()):
            earlier = contextvars.copy_context()
            obs.set_actor(obs.Actor.user("u_late"))
            later = contextvars.copy_context()
            assert earlier.run(lambda: obs.current_scope().actor) == obs.Actor.anonymous()
            assert later.run(lambda: obs.current_scope().actor) == obs.Actor.user("u_late")
        assert obs.current_scope().actor is None

    def test_outside_any_scope_it_sets_nothing_warns_once_and_counts(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without a scope, set_actor() has nothing to change: an actor set there would stick
        to a pooled thread and leak into later, unrelated work."""

        def body() -> obs.Actor | None:
            obs.set_actor(obs.Actor.service("key_1"))
            return obs.current_scope().actor

        with caplog.at_level("WARNING", logger="obs_sdk"):
            assert contextvars.copy_context().run(body) is None
            obs.set_actor(obs.Actor.service("key_2"))
        assert obs.current_scope().actor is None
        assert obs.stats()["set_actor_outside_scope"] == 2
        warnings = [r for r in caplog.records if "outside any scope" in r.getMessage()]
        assert len(warnings) == 1  # once


class TestIsolation:
    async def test_hundred_tasks_never_see_each_others_actor(self) -> None:
        """100 concurrent asyncio tasks with different actors each record only their own."""

        async def request(i: int) -> None:
            with obs.scope(actor=obs.Actor.user(f"u_{i}"), workspace=f"ws_{i}"):
                for _ in range(3):
                    await asyncio.sleep(0)
                    do_thing()

        with capture() as cap:
            await asyncio.gather(*(request(i) for i in range(100)))
        assert len(cap.audits) == 300
        for record in cap.audits:
            assert record["actor_id"].removeprefix("u_") == record["workspace_id"].removeprefix(
                "ws_"
            )

    def test_eight_threads_never_see_each_others_actor(self) -> None:
        """8 threads with different actors, interleaved, each record only their own actor."""
        barrier = threading.Barrier(8)

        def worker(i: int) -> None:
            with obs.scope(actor=obs.Actor.user(f"u_{i}"), organization=f"org_{i}"):
                barrier.wait()
                for _ in range(200):
                    do_thing()

        with capture() as cap, ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
        assert len(cap.audits) == 1600
        assert all(
            r["actor_id"].removeprefix("u_") == r["organization_id"].removeprefix("org_")
            for r in cap.audits
        )

    def test_with_scope_carries_the_scope_into_a_thread(self) -> None:
        """with_scope(fn) runs fn on another thread with the caller's scope, then restores."""
        with obs.scope(actor=obs.Actor.user("u_1"), workspace="ws_1"):
            bound = obs.with_scope(obs.current_scope)
        with ThreadPoolExecutor(1) as pool:
            seen = pool.submit(bound).result()
            after = pool.submit(obs.current_scope).result()
        assert (seen.actor, seen.workspace) == (obs.Actor.user("u_1"), "ws_1")
        assert after == obs.Scope()

    async def test_with_scope_wraps_coroutine_functions(self) -> None:
        """with_scope on an async function keeps it awaitable and scoped."""

        async def read() -> str | None:
            return obs.current_scope().workspace

        with obs.scope(workspace="ws_async"):
            bound = obs.with_scope(read)
        assert await bound() == "ws_async"

    def test_a_thread_without_the_context_has_no_scope(self) -> None:
        """A plain thread (no copied context) starts outside every scope."""
        with obs.scope(actor=obs.Actor.user("u_1")), ThreadPoolExecutor(1) as pool:
            assert pool.submit(obs.current_scope).result() == obs.Scope()


class TestSuppressed:
    def test_nothing_is_recorded_inside(self) -> None:
        """suppressed() drops every record made inside it, and only inside it."""
        with capture() as cap:
            with obs.suppressed():
                do_thing()
                obs.record_audit("manual.thing")
            do_thing()
        assert len(cap.audits) == 1

    def test_also_suppresses_opentelemetry_instrumentation(self) -> None:
        """Inside suppressed(), OTel's own suppression key is set for instrumentations."""
        key = otel_context._SUPPRESS_INSTRUMENTATION_KEY
        with obs.suppressed():
            assert otel_context.get_value(key) is True
        assert otel_context.get_value(key) is None


class TestScopeProvider:
    def test_fills_only_fields_no_scope_set(self, sqlite_url: str) -> None:
        """A provider's values apply where no scope set the field; an explicit scope wins."""
        obs.configure(
            database=sqlite_url,
            scope_provider=lambda: {"actor": obs.Actor.user("from_provider"), "ip": "10.0.0.1"},
        )
        with capture() as cap:
            do_thing()
            with obs.scope(actor=obs.Actor.user("explicit")):
                do_thing()
        assert [(a["actor_id"], a["ip"]) for a in cap.audits] == [
            ("from_provider", "10.0.0.1"),
            ("explicit", "10.0.0.1"),
        ]
        assert obs.current_scope().actor == obs.Actor.user("from_provider")
