"""The console view beside the real posthog client, and events with no actor in scope."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import posthog
import pytest

import obs_sdk as obs
from tests.support.posthog_receiver import PosthogReceiver, as_legacy, make_client

ADA = obs.Actor.user("u_ada", name="Ada")


@obs.tracked("file_downloaded", properties={"file_id": "{file_id}"})
def download(file_id: str) -> None: ...


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


@pytest.fixture
def client(receiver: PosthogReceiver) -> Iterator[posthog.Posthog]:
    made = make_client(receiver)
    yield made
    made.shutdown()


class TestWithPostHog:
    def test_events_are_sent_and_printed(
        self,
        sqlite_url: str,
        client: posthog.Posthog,
        receiver: PosthogReceiver,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """With a client, the console prints what is sent; nothing is counted unsent."""
        obs.configure(sqlite_url, posthog=client, console=True)
        with obs.scope(actor=ADA, organization="org_1"):
            download("f_1")
        assert obs.flush(10.0)
        (event,) = [as_legacy(e) for e in receiver.wait_for(1)]
        (line,) = capsys.readouterr().err.splitlines()
        assert line.split()[1:] == [
            "event", "file_downloaded", "success", "u_ada", "org=org_1", "{file_id=f_1}"
        ]  # fmt: skip
        assert event["event"] == "file_downloaded"
        stats = obs.stats()
        assert (stats["unsent_events"], stats["delivered"]) == (0, 1)
        assert stats["by_sink"]["console"]["delivered"] == 1

    def test_track_outside_a_scope_is_counted_and_said_once(
        self,
        sqlite_url: str,
        client: posthog.Posthog,
        receiver: PosthogReceiver,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """No actor in scope: nothing reaches PostHog, each call is counted, one WARNING."""
        obs.configure(sqlite_url, posthog=client)
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            obs.track("exported")
            download("f_1")
            with obs.scope(actor=ADA):
                download("f_2")
        assert obs.flush(10.0)
        (event,) = [as_legacy(e) for e in receiver.wait_for(1)]
        assert event["properties"]["file_id"] == "f_2"
        assert obs.stats()["unsent_events"] == 2
        (warning,) = [r.getMessage() for r in caplog.records]
        assert "'exported' was not sent: no actor in scope" in warning
