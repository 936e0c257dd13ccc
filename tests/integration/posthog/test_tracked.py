"""@tracked and track() through the real posthog client to a loopback receiver (issue 4)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import posthog
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk.testing import capture
from tests.support.posthog_receiver import ErrorRecorder, PosthogReceiver, as_legacy, make_client

ADA = obs.Actor.user("u_ada", name="Ada", email="ada@example.com")


@dataclass
class Download:
    name: str
    size: int


@obs.tracked(
    "file_downloaded",
    properties={"file_id": "{file_id}", "bytes": "{result.size}", "note": "{note}"},
)
def download(file_id: str, note: str | None = None) -> Download:
    return Download("a.txt", 2048)


@obs.tracked("file_downloaded_failing", when="always")
def failing() -> None:
    raise LookupError("nope")


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


@pytest.fixture(params=["v0", "v1"])
def client(request: pytest.FixtureRequest, receiver: PosthogReceiver) -> Iterator[posthog.Posthog]:
    made = make_client(receiver, capture_mode=request.param, gzip=request.param == "v1")
    yield made
    made.shutdown()


class TestDelivery:
    def test_event_fields_arrive(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """Name, distinct_id, typed properties, $groups, timestamp and uuid reach PostHog."""
        obs.configure(database=sqlite_url, posthog=client)
        with obs.scope(actor=ADA, workspace="ws_1", organization="org_1"):
            before = time.time()
            download("f_1", note="")
        assert obs.flush(5.0)
        (event,) = arrived(receiver, 1)
        assert event["event"] == "file_downloaded"
        assert event["distinct_id"] == "u_ada"
        props = event["properties"]
        assert props["file_id"] == "f_1"
        assert props["bytes"] == 2048  # a single-field template keeps its type
        assert "note" not in props  # "" and None are omitted
        assert props["$groups"] == {"workspace": "ws_1", "organization": "org_1"}
        assert "$process_person_profile" not in props
        uuid.UUID(event["uuid"])
        sent_at = event["timestamp"]
        assert sent_at.endswith("+00:00") or sent_at.endswith("Z")
        assert abs(_epoch(sent_at) - before) < 60

    def test_failures_and_unidentified_callers_send_nothing(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """Anonymous, system and failing calls send nothing without the opt-ins."""
        obs.configure(database=sqlite_url, posthog=client)
        with obs.scope(actor=obs.Actor.anonymous("ph_1")):
            download("f_1")
        with obs.scope(actor=obs.Actor.system("cron")):
            download("f_2")
        download("f_3")  # no scope at all: anonymous
        with obs.scope(actor=ADA):
            with pytest.raises(LookupError):
                failing()
            obs.track("marker")
        assert obs.flush(5.0)
        events = arrived(receiver, 2)
        assert [(e["event"], e["distinct_id"]) for e in events] == [
            ("file_downloaded_failing", "u_ada"),
            ("marker", "u_ada"),
        ]
        assert events[0]["properties"].get("error_type") is None

    def test_opt_ins_send_personless_events(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """The opt-ins send under the visitor id / "system:<label>", personless."""
        obs.configure(database=sqlite_url, posthog=client)

        @obs.tracked("shared_download", allow_anonymous=True, allow_system=True)
        def shared() -> None: ...

        with obs.scope(actor=obs.Actor.anonymous("ph_visitor")):
            shared()
        with obs.scope(actor=obs.Actor.system("stripe")):
            shared()
        obs.track("cron_ran", allow_system=True)  # no actor at all: not system, so nothing
        assert obs.flush(5.0)
        events = arrived(receiver, 2)
        assert [(e["distinct_id"], e["properties"]["$process_person_profile"]) for e in events] == [
            ("ph_visitor", False),
            ("system:stripe", False),
        ]

    def test_identify_group(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """identify_group sends $groupidentify with the group's properties."""
        obs.configure(database=sqlite_url, posthog=client)
        obs.identify_group("organization", "org_1", {"name": "Acme", "plan": "pro", "empty": None})
        assert obs.flush(5.0)
        (event,) = arrived(receiver, 1)
        assert event["event"] == "$groupidentify"
        assert event["properties"]["$group_type"] == "organization"
        assert event["properties"]["$group_key"] == "org_1"
        assert event["properties"]["$group_set"] == {"name": "Acme", "plan": "pro"}

    def test_person_properties_opt_in(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """configure(person_properties=True) adds the actor's name and email as $set."""
        obs.configure(database=sqlite_url, posthog=client, person_properties=True)
        with obs.scope(actor=ADA):
            obs.track("signed_in")
        assert obs.flush(5.0)
        (event,) = arrived(receiver, 1)
        assert event["properties"]["$set"] == {"name": "Ada", "email": "ada@example.com"}

    def test_secrets_in_properties_are_redacted(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """Secret-looking property keys never leave the process."""
        obs.configure(database=sqlite_url, posthog=client)
        with obs.scope(actor=ADA):
            obs.track(
                "api_called", properties={"api_key": "sk_live_1", "nested": [{"Password": "p"}]}
            )
        assert obs.flush(5.0)
        (event,) = arrived(receiver, 1)
        assert event["properties"]["api_key"] == "[REDACTED]"
        assert event["properties"]["nested"] == [{"Password": "[REDACTED]"}]


class TestTransactions:
    def test_held_until_commit_and_dropped_on_rollback(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """Inside scope(session=...) events wait for the commit; rollback drops them."""
        engine = create_engine(sqlite_url)
        obs.configure(database=engine, posthog=client)
        with Session(engine) as session, obs.scope(actor=ADA, session=session):
            session.execute(text("SELECT 1"))  # a transaction in progress: events join it
            download("rolled_back")
            session.rollback()
            download("committed")
            assert obs.flush(5.0)
            assert receiver.events == []
            session.commit()
        assert obs.flush(5.0)
        events = arrived(receiver, 1)
        assert [e["properties"]["file_id"] for e in events] == ["committed"]

    async def test_async_session(
        self, tmp_path: Path, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """AsyncSession commits release the event; rollbacks drop it."""
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        obs.configure(database=engine, posthog=client)
        async with AsyncSession(engine) as session:
            with obs.scope(actor=ADA, session=session):
                await session.execute(text("SELECT 1"))
                download("async_rolled_back")
                await session.rollback()
                download("async_committed")
                await session.commit()
        await engine.dispose()
        assert obs.flush(5.0)
        assert [e["properties"]["file_id"] for e in arrived(receiver, 1)] == ["async_committed"]


class TestIsolation:
    async def test_hundred_tasks_carry_their_own_actor_and_groups(self) -> None:
        """100 concurrent tasks with different actors and workspaces never mix identities."""

        async def request(i: int) -> None:
            with obs.scope(
                actor=obs.Actor.user(f"u_{i}"), workspace=f"ws_{i}", organization=f"org_{i}"
            ):
                await asyncio.sleep(0)
                download(f"f_{i}")

        with capture() as cap:
            await asyncio.gather(*(request(i) for i in range(100)))
        assert len(cap.events) == 100
        for event in cap.events:
            i = event["distinct_id"].removeprefix("u_")
            assert event["groups"] == {"workspace": f"ws_{i}", "organization": f"org_{i}"}
            assert event["properties"]["file_id"] == f"f_{i}"


class TestFailures:
    @pytest.mark.swallows_internal_errors
    def test_5xx_is_counted_and_the_caller_unaffected(
        self, sqlite_url: str, receiver: PosthogReceiver
    ) -> None:
        """PostHog answering 5xx: calls return normally and upload failures are counted."""
        recorder = ErrorRecorder()

        def on_error(error: Exception, batch: list[dict[str, object]]) -> None:
            obs.posthog_on_error(error, batch)
            recorder(error, batch)

        client = make_client(receiver, on_error=on_error)
        try:
            obs.configure(database=sqlite_url, posthog=client)
            receiver.fail_with(503)
            with obs.scope(actor=ADA):
                assert download("f_1").size == 2048
            obs.flush(5.0)
            recorder.wait_for(1)
            assert obs.stats()["by_sink"]["posthog"]["upload_failed"] >= 1
        finally:
            client.shutdown()

    def test_analytics_off_without_a_client(
        self, sqlite_url: str, receiver: PosthogReceiver
    ) -> None:
        """With no PostHog client, tracked calls work, nothing is queued, audits still land."""
        obs.configure(database=sqlite_url)

        @obs.audited("file.downloaded")
        @obs.tracked("file_downloaded")
        def both() -> int:
            return 1

        with obs.scope(actor=ADA):
            assert both() == 1
        assert obs.flush(5.0)
        assert obs.stats()["submitted"] == 1
        assert len(obs.audit_log(create_engine(sqlite_url))) == 1

    def test_exit_is_bounded_when_posthog_is_not_listening(self, tmp_path: Path) -> None:
        """A process whose PostHog host refuses connections still exits within the timeout."""
        script = textwrap.dedent(
            f"""
            import socket, posthog, obs_sdk as obs
            s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
            client = posthog.Posthog("phc_test", host=f"http://127.0.0.1:{{port}}", max_retries=1,
                                     on_error=obs.posthog_on_error, flush_interval=0.05)
            obs.configure(database="sqlite:///{tmp_path / "x.db"}", posthog=client)
            with obs.scope(actor=obs.Actor.user("u")):
                for i in range(50):
                    obs.track("e", properties={{"i": i}})
            print("done")
            """
        )
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "done"
        assert time.monotonic() - started < 30  # bounded by the shutdown timeouts, not a hang


class TestConfiguration:
    def test_module_and_async_client_are_refused(self, sqlite_url: str) -> None:
        """Passing the posthog module or an AsyncPosthog says what to pass instead."""
        with pytest.raises(obs.ConfigurationError, match="not the posthog module"):
            obs.configure(database=sqlite_url, posthog=posthog)
        with pytest.raises(obs.ConfigurationError, match="AsyncPosthog"):
            obs.configure(
                database=sqlite_url,
                posthog=posthog.AsyncPosthog("phc_x", host="http://127.0.0.1:9"),
            )


def arrived(receiver: PosthogReceiver, count: int) -> list[dict[str, object]]:
    """Wait for *count* events and return them in the /batch/ shape, whichever protocol."""
    return [as_legacy(e) for e in receiver.wait_for(count)]


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
