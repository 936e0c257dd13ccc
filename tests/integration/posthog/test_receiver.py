"""The loopback PostHog receiver against the real posthog client (no mocks)."""

from __future__ import annotations

import gzip
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
import requests
from posthog.capture_v1 import CaptureV1Error
from posthog.request import APIError

from tests.support.posthog_receiver import (
    TEST_API_KEY,
    V0_PATH,
    V1_PATH,
    ErrorRecorder,
    PosthogReceiver,
    as_legacy,
    posthog_client,
)

AT = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
IDS = [uuid.uuid5(uuid.NAMESPACE_URL, f"obs-sdk-test-{n}") for n in range(3)]


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


def capture_three(client) -> None:
    client.capture(
        "file_uploaded",
        distinct_id="user-1",
        properties={"bytes": 1024, "name": "a.txt"},
        groups={"workspace": "ws-1", "organization": "org-1"},
        uuid=IDS[0],
        timestamp=AT,
    )
    client.capture(
        "file_deleted",
        distinct_id="user-1",
        groups={"workspace": "ws-1"},
        uuid=str(IDS[1]),
        timestamp=AT + timedelta(seconds=1),
    )
    client.capture(
        "report_sent",
        distinct_id="system:cron",
        properties={"$process_person_profile": False},
        uuid=IDS[2],
        timestamp=AT + timedelta(seconds=2),
    )


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, object]:
    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=5)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class TestBatchEndpoint:
    @pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
    def test_decodes_every_field_of_three_events(self, receiver, compress):
        """Three captures reach /batch/ with ids, uuids, timestamps, groups, props."""
        with posthog_client(receiver, gzip=compress) as client:
            capture_three(client)
            client.flush()
            events = receiver.events

        assert [(e["event"], e["distinct_id"], e["uuid"], e["timestamp"]) for e in events] == [
            ("file_uploaded", "user-1", str(IDS[0]), "2026-11-27T12:00:00+00:00"),
            ("file_deleted", "user-1", str(IDS[1]), "2026-11-27T12:00:01+00:00"),
            ("report_sent", "system:cron", str(IDS[2]), "2026-11-27T12:00:02+00:00"),
        ]
        assert [e["properties"].get("$groups") for e in events] == [
            {"workspace": "ws-1", "organization": "org-1"},
            {"workspace": "ws-1"},
            None,
        ]
        assert {k: events[0]["properties"][k] for k in ("bytes", "name", "$lib")} == {
            "bytes": 1024,
            "name": "a.txt",
            "$lib": "posthog-python",
        }
        assert events[2]["properties"]["$process_person_profile"] is False
        assert {
            (r.path, r.protocol, r.status, r.api_key, r.headers.get("content-encoding"))
            for r in receiver.requests
        } == {(V0_PATH, "v0", 200, TEST_API_KEY, "gzip" if compress else None)}

    def test_group_identify_arrives_as_groupidentify_event(self, receiver):
        """group_identify() sends $groupidentify with group type, key and $group_set."""
        with posthog_client(receiver) as client:
            client.group_identify("organization", "org-1", {"name": "Acme"}, distinct_id="user-1")
            client.flush()

        (event,) = receiver.events_named("$groupidentify")
        assert (event["distinct_id"], event["properties"]["$group_type"]) == (
            "user-1",
            "organization",
        )
        assert event["properties"]["$group_key"] == "org-1"
        assert event["properties"]["$group_set"] == {"name": "Acme"}

    def test_sync_mode_sends_before_capture_returns(self, receiver):
        """With sync_mode=True the event has arrived when capture() returns."""
        with posthog_client(receiver, sync_mode=True) as client:
            client.capture("now", distinct_id="user-1", uuid=IDS[0])
            assert [e["uuid"] for e in receiver.events] == [str(IDS[0])]


class TestCaptureV1Endpoint:
    @pytest.mark.parametrize("compression", ["none", "gzip", "deflate"])
    def test_decodes_v1_events_with_options(self, receiver, compression):
        """v1 posts to /i/v1/analytics/events with Bearer auth, in any encoding."""
        with posthog_client(receiver, capture_mode="v1", capture_compression=compression) as client:
            capture_three(client)
            client.flush()
            events = receiver.events

        assert [(e["event"], e["uuid"], e["timestamp"]) for e in events] == [
            ("file_uploaded", str(IDS[0]), "2026-11-27T12:00:00+00:00"),
            ("file_deleted", str(IDS[1]), "2026-11-27T12:00:01+00:00"),
            ("report_sent", str(IDS[2]), "2026-11-27T12:00:02+00:00"),
        ]
        assert [e["options"] for e in events] == [
            {},
            {},
            {"process_person_profile": False},
        ]
        assert events[0]["properties"]["$groups"] == {
            "workspace": "ws-1",
            "organization": "org-1",
        }
        assert "$lib" not in events[0]["properties"]
        encoding = None if compression == "none" else compression
        assert {
            (r.path, r.protocol, r.status, r.api_key, r.headers.get("content-encoding"))
            for r in receiver.requests
        } == {(V1_PATH, "v1", 200, TEST_API_KEY, encoding)}
        assert {r.headers["posthog-sdk-info"].split("/")[0] for r in receiver.requests} == {
            "posthog-python"
        }

    def test_as_legacy_gives_both_protocols_one_shape(self, receiver):
        """as_legacy() gives v1 events the /batch/ shape, options included."""
        with posthog_client(receiver, capture_mode="v1") as v1_client:
            capture_three(v1_client)
            v1_client.flush()
        v1_events = [as_legacy(e) for e in receiver.events]
        receiver.clear()
        with posthog_client(receiver) as v0_client:
            capture_three(v0_client)
            v0_client.flush()
        v0_events = [as_legacy(e) for e in receiver.events]

        for event in v0_events:
            for key in ("$lib", "$lib_version"):
                del event["properties"][key]
        assert v1_events == v0_events


class TestOutage:
    def test_5xx_on_batch_reaches_on_error(self, receiver):
        """A 503 from /batch/ reaches on_error(exc, batch) and keeps no events."""
        errors = ErrorRecorder()
        receiver.fail_with(503)
        with posthog_client(receiver, on_error=errors) as client:
            capture_three(client)
            client.flush()
            calls = errors.wait_for(1)

        assert {type(error) for error, _ in calls} == {APIError}
        statuses = [e.status for e, _ in calls if isinstance(e, APIError)]
        assert statuses == [503] * len(calls)
        uuids = sorted(e["uuid"] for _, batch in calls for e in batch)
        assert uuids == sorted(map(str, IDS))
        assert receiver.events == []
        assert {r.status for r in receiver.requests} == {503}
        assert receiver.request_count == len(calls)

    def test_5xx_on_capture_v1_reaches_on_error(self, receiver):
        """A 503 from the v1 endpoint reaches on_error as CaptureV1Error."""
        errors = ErrorRecorder()
        receiver.fail_with(503)
        with posthog_client(receiver, capture_mode="v1", on_error=errors) as client:
            client.capture("lost", distinct_id="user-1", uuid=IDS[0])
            client.flush()
            ((error, batch),) = errors.wait_for(1)

        assert isinstance(error, CaptureV1Error)
        assert (error.status, error.attempts) == (503, 1)
        assert [e["uuid"] for e in batch] == [str(IDS[0])]
        assert receiver.events == []

    def test_recovers_after_a_limited_outage(self, receiver):
        """fail_with(503, times=1) refuses one request; the one retry lands."""
        errors = ErrorRecorder()
        receiver.fail_with(503, times=1)
        with posthog_client(receiver, max_retries=1, on_error=errors) as client:
            client.capture("retried", distinct_id="user-1", uuid=IDS[0])
            client.flush()

        assert [e["uuid"] for e in receiver.events] == [str(IDS[0])]
        assert [r.status for r in receiver.requests] == [503, 200]
        assert errors.calls == []

    def test_flush_is_bounded_when_the_receiver_is_stopped(self, receiver):
        """With the port closed, flush() returns in time and on_error fires."""
        errors = ErrorRecorder()
        with posthog_client(receiver, on_error=errors) as client:
            receiver.stop()
            client.capture("lost", distinct_id="user-1")
            started = time.monotonic()
            client.flush(timeout_seconds=2.0)
            elapsed = time.monotonic() - started
            ((error, _),) = errors.wait_for(1)

        assert elapsed < 2.0
        assert isinstance(error, requests.ConnectionError)
        assert receiver.request_count == 0

    def test_flush_is_bounded_when_the_receiver_hangs(self, receiver):
        """While requests hang, flush(timeout_seconds) returns after its timeout."""
        with posthog_client(receiver) as client:
            with receiver.stalled():
                client.capture("held", distinct_id="user-1", uuid=IDS[0])
                receiver.wait_for_requests(1)
                started = time.monotonic()
                client.flush(timeout_seconds=0.2)
                elapsed = time.monotonic() - started
                assert receiver.events == []
            events = receiver.wait_for(1)

        assert 0.2 <= elapsed < 1.0
        assert [e["uuid"] for e in events] == [str(IDS[0])]


class TestReceiver:
    def test_wait_for_fails_with_what_arrived(self, receiver):
        """wait_for() raises AssertionError with the counts when events are missing."""
        with pytest.raises(
            AssertionError, match=r"expected 1 PostHog event\(s\) within 0.05s, got 0"
        ):
            receiver.wait_for(1, timeout=0.05)

    def test_clear_forgets_events_and_requests(self, receiver):
        """clear() empties events, requests and the request count."""
        with posthog_client(receiver) as client:
            client.capture("x", distinct_id="user-1")
            client.flush()
        receiver.clear()

        assert (receiver.events, receiver.requests, receiver.request_count) == (
            [],
            [],
            0,
        )

    def test_rejects_unknown_paths_and_undecodable_bodies(self, receiver):
        """Other paths answer 404, undecodable bodies 400; neither keeps events."""
        batch = json.dumps({"api_key": "k", "batch": [{"event": "x"}]}).encode()

        assert post(receiver.url, "/capture/", batch, {})[0] == 404
        assert post(receiver.url, V0_PATH, b"not gzip", {"Content-Encoding": "gzip"})[0] == 400
        assert post(receiver.url, V0_PATH, gzip.compress(batch), {"Content-Encoding": "gzip"}) == (
            200,
            {"status": 1},
        )
        assert receiver.events == [{"event": "x"}]
        assert [r.status for r in receiver.requests] == [404, 400, 200]
