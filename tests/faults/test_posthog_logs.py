"""PostHog down: one line in the logs, not one per failed batch (issue 15).

The real posthog client uploads to a loopback port that nothing listens on (connection
refused), as when a self-hosted receiver is down. Its consumer logs an ERROR per failed
batch on the ``posthog`` logger; obs_sdk turns them into one WARNING of its own that names
the sink and what to do, and keeps each failure (with its traceback) at DEBUG.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import posthog
import pytest

import obs_sdk as obs
from tests.faults.test_pipelines import wait_until

pytestmark = pytest.mark.acceptance

EVENTS = 500  # 50 batches of 10


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def client(closed_port: int) -> Iterator[posthog.Posthog]:
    made = posthog.Posthog(
        "phc_test",
        host=f"http://127.0.0.1:{closed_port}",
        flush_at=10,
        flush_interval=0.05,
        max_retries=0,  # each batch fails at once: 50 failures within the test
        on_error=obs.posthog_on_error,
        enable_exception_autocapture=False,
    )
    yield made
    obs.shutdown(timeout=5.0)
    made.shutdown()


@obs.tracked("report_viewed", properties={"n": "{n}"})
def view(n: int) -> int:
    return n


def test_a_refused_connection_logs_one_line(
    sqlite_url: str,
    client: posthog.Posthog,
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    obs.configure(sqlite_url, posthog=client)
    with obs.scope(actor=obs.Actor.user("u_ada")):
        for n in range(EVENTS):
            assert view(n) == n
    obs.flush(timeout=10.0)

    def upload_failed() -> int:
        return int(obs.stats()["by_sink"]["posthog"]["upload_failed"])

    assert wait_until(lambda: upload_failed() == EVENTS, 20.0), upload_failed()

    said = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1, [f"{r.name}: {r.getMessage()[:120]}" for r in said]
    (line,) = said
    message = line.getMessage()
    assert line.name == "obs_sdk" and line.levelno == logging.WARNING
    assert "PostHog sink" in message and f"127.0.0.1:{closed_port}" in message
    assert "connection refused" in message and "reachable" in message
    assert line.exc_info is None and "\n" not in message
    tracebacks = [r for r in caplog.records if r.name == "obs_sdk" and r.exc_info]
    assert tracebacks and all(r.levelno == logging.DEBUG for r in tracebacks)
    assert obs.stats()["internal_errors"] == 0  # a routine outage is not an obs_sdk error


def test_other_posthog_messages_pass(
    sqlite_url: str, client: posthog.Posthog, caplog: pytest.LogCaptureFixture
) -> None:
    """Only upload failures are taken over: the posthog logger says everything else."""
    obs.configure(sqlite_url, posthog=client)
    logging.getLogger("posthog").warning("something else")
    assert any(r.name == "posthog" and "something else" in r.getMessage() for r in caplog.records)
