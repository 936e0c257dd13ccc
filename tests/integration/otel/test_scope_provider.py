"""configure(scope_provider=...) and the contextvars-extras adapter."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from contextvars_extras import ContextVarsRegistry

import obs_sdk as obs
from obs_sdk.integrations.contextvars_extras import scope_provider
from obs_sdk.testing import capture

KEYS = (
    "actor_type",
    "actor_id",
    "workspace_id",
    "organization_id",
    "ip",
    "user_agent",
    "request_id",
)


@obs.audited("doc.viewed", resource=obs.Resource("doc", "{doc_id}"))
def view(doc_id: str) -> str:
    """Leave one audit record."""
    return doc_id


def fields(record: dict[str, Any]) -> dict[str, Any]:
    """Return the scope columns of an audit record."""
    return {k: record[k] for k in KEYS}


# Where a hypothetical app keeps its request state: plain context variables.
app_state: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("app_state")


def from_app_state() -> dict[str, Any]:
    """A scope provider reading the app's own context variable."""
    return app_state.get({})


class TestScopeProvider:
    """A provider fills only the fields no obs.scope set, when a record is made."""

    @pytest.fixture(autouse=True)
    def _configured(self, sqlite_url: str) -> Iterator[None]:
        obs.configure(sqlite_url, scope_provider=from_app_state)
        token = app_state.set(
            {
                "actor": obs.Actor.user("u_app"),
                "workspace": "ws_app",
                "organization": "org_app",
                "ip": "198.51.100.7",
                "user_agent": "app/1",
                "request_id": "req_app",
            }
        )
        yield
        app_state.reset(token)

    def test_provider_fields_fill_records_and_current_scope(self) -> None:
        """With no scope at all, every field comes from the provider."""
        with capture() as captured:
            view("d_1")
        assert fields(captured.audits[0]) == {
            "actor_type": "user",
            "actor_id": "u_app",
            "workspace_id": "ws_app",
            "organization_id": "org_app",
            "ip": "198.51.100.7",
            "user_agent": "app/1",
            "request_id": "req_app",
        }
        assert obs.current_scope().workspace == "ws_app"

    def test_explicit_scope_wins_field_by_field(self) -> None:
        """A scope's actor and ip win; the fields it left unset still come from the provider."""
        with capture() as captured, obs.scope(actor=obs.Actor.service("svc_1"), ip="192.0.2.1"):
            view("d_1")
        record = fields(captured.audits[0])
        assert (record["actor_type"], record["actor_id"], record["ip"]) == (
            "service",
            "svc_1",
            "192.0.2.1",
        )
        assert (record["workspace_id"], record["request_id"]) == ("ws_app", "req_app")

    def test_workspace_and_organization_are_one_unit(self) -> None:
        """A scope that sets only a workspace never picks up the provider's organization."""
        with capture() as captured, obs.scope(workspace="ws_personal"):
            view("d_1")
            current = obs.current_scope()
        record = captured.audits[0]
        assert (record["workspace_id"], record["organization_id"]) == ("ws_personal", None)
        assert (current.workspace, current.organization) == ("ws_personal", None)

    def test_provider_is_read_when_each_record_is_made(self) -> None:
        """Values the app changes inside one scope show in the next record."""
        with capture() as captured, obs.scope(request_id="req_1"):
            view("d_1")
            app_state.set({**app_state.get(), "actor": obs.Actor.user("u_later")})
            view("d_2")
        assert [a["actor_id"] for a in captured.audits] == ["u_app", "u_later"]

    def test_each_thread_sees_its_own_state(self) -> None:
        """The provider runs on the caller's thread, so it reads that thread's context."""

        def on_thread(n: int) -> None:
            app_state.set({"actor": obs.Actor.user(f"u_{n}")})
            view(f"d_{n}")

        with capture() as captured, ThreadPoolExecutor(4) as pool:
            list(pool.map(on_thread, range(8)))
        assert sorted(a["actor_id"] for a in captured.audits) == [f"u_{n}" for n in range(8)]
        assert all(a["resource_id"] == f"d_{a['actor_id'][2:]}" for a in captured.audits)

    def test_inject_sends_provider_fields(self) -> None:
        """Propagation reads the same merged scope, provider fields included."""
        headers: dict[str, str] = {}
        with obs.scope(workspace="ws_1"):
            obs.propagation.inject(headers)
        assert headers == {
            "obs-workspace": "ws_1",
            "obs-actor-type": "user",
            "obs-actor-id": "u_app",
            "obs-request-id": "req_app",
        }

    @pytest.mark.swallows_internal_errors
    def test_failing_provider_never_breaks_the_caller(self) -> None:
        """A provider that raises is counted; the call returns normally."""

        def broken() -> dict[str, Any]:
            raise RuntimeError("request state unavailable")

        obs.configure("sqlite://", scope_provider=broken)
        assert view("d_1") == "d_1"
        assert obs.current_scope() == obs.Scope()
        assert obs.stats()["internal_errors"] == 2

    def test_provider_must_be_callable(self, sqlite_url: str) -> None:
        """A non-callable provider is a ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="scope_provider"):
            obs.configure(sqlite_url, scope_provider={"workspace": "ws_1"})  # type: ignore[arg-type]


class Current(ContextVarsRegistry):
    """The app's request state, as a contextvars-extras registry."""

    user: Any = None
    workspace_id: Any = None
    organization_id: Any = None
    request_id: Any = None


current = Current()


class TestContextvarsExtrasAdapter:
    """scope_provider(registry) turns a ContextVarsRegistry into a scope provider."""

    @pytest.fixture(autouse=True)
    def _configured(self, sqlite_url: str) -> None:
        provider = scope_provider(
            current, actor="user", workspace="workspace_id", organization="organization_id"
        )
        obs.configure(sqlite_url, scope_provider=provider)

    def test_registry_values_appear_in_records(self) -> None:
        """Actor, workspace and organization set in the registry are recorded."""
        with (
            capture() as captured,
            current(
                user=obs.Actor.user("u_1", name="Ada"), workspace_id="ws_1", organization_id="org_1"
            ),
        ):
            view("d_1")
        record = captured.audits[0]
        assert (record["actor_id"], record["actor_name"]) == ("u_1", "Ada")
        assert (record["workspace_id"], record["organization_id"]) == ("ws_1", "org_1")

    def test_explicit_scope_wins(self) -> None:
        """obs.scope values override the registry's, workspace and organization as a unit."""
        with (
            capture() as captured,
            current(user=obs.Actor.user("u_1"), workspace_id="ws_1", organization_id="org_1"),
        ):
            with obs.scope(actor=obs.Actor.system("cron"), workspace="ws_personal"):
                view("d_1")
        assert fields(captured.audits[0]) | {"actor_name": captured.audits[0]["actor_name"]} == {
            "actor_type": "system",
            "actor_id": None,
            "actor_name": "cron",
            "workspace_id": "ws_personal",
            "organization_id": None,
            "ip": None,
            "user_agent": None,
            "request_id": None,
        }

    def test_plain_ids_are_read_as_users_and_text(self) -> None:
        """A user id string becomes Actor.user; an integer tenant id becomes its text."""
        with capture() as captured, current(user="u_7", workspace_id=42, request_id="req_1"):
            view("d_1")
        record = fields(captured.audits[0])
        assert (record["actor_type"], record["actor_id"], record["workspace_id"]) == (
            "user",
            "u_7",
            "42",
        )
        assert record["request_id"] == "req_1"

    def test_unset_and_unusable_values_provide_nothing(self) -> None:
        """Defaults, empty strings and odd types leave the record anonymous and tenant-less."""
        with capture() as captured, current(user=3.5, workspace_id=""):
            view("d_1")
        record = fields(captured.audits[0])
        assert (record["actor_type"], record["workspace_id"]) == ("anonymous", None)

    async def test_tasks_keep_their_own_registry_values(self) -> None:
        """Each asyncio task records the user it set, even when they interleave."""
        arrived: list[str] = []
        both_set = asyncio.Event()  # asyncio.Barrier is 3.11+; the floor is 3.10

        async def handle(user_id: str) -> None:
            current.user = user_id
            arrived.append(user_id)
            if len(arrived) == 2:
                both_set.set()
            await both_set.wait()
            view(user_id)

        with capture() as captured:
            await asyncio.gather(handle("u_a"), handle("u_b"))
        assert sorted((a["actor_id"], a["resource_id"]) for a in captured.audits) == [
            ("u_a", "u_a"),
            ("u_b", "u_b"),
        ]

    def test_actor_callable(self, sqlite_url: str) -> None:
        """A callable maps whatever the registry keeps to an Actor."""
        provider = scope_provider(
            current, actor=lambda reg: obs.Actor.service(f"key_{reg['request_id']}")
        )
        obs.configure(sqlite_url, scope_provider=provider)
        with capture() as captured, current(request_id="r9"):
            view("d_1")
        assert (captured.audits[0]["actor_type"], captured.audits[0]["actor_id"]) == (
            "service",
            "key_r9",
        )

    def test_bad_arguments_raise(self) -> None:
        """A registry that is not a mapping, or a field name that is not text, is refused."""
        with pytest.raises(obs.ConfigurationError, match="ContextVarsRegistry"):
            scope_provider(object())  # type: ignore[arg-type]
        with pytest.raises(obs.ConfigurationError, match="workspace"):
            scope_provider(current, workspace=1)  # type: ignore[arg-type]
