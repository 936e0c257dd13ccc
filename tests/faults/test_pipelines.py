"""Delivery under faults: one pipeline per sink, honest counts, bounded memory, quiet logs.

Real databases (a SQLite file and the PostgreSQL server, through ``database_url``), the real
``posthog`` client sending to a loopback receiver, and subprocesses where memory or a fork
is measured. A database is made unavailable the way production sees it: another connection
holds a lock on ``obs_audit_log`` (PostgreSQL ``LOCK TABLE``, SQLite ``BEGIN EXCLUSIVE``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk._delivery import _dispatch
from tests.support.posthog_receiver import PosthogReceiver, make_client

pytestmark = pytest.mark.acceptance

TIMEOUT = 60  # seconds; a hung child fails the test instead of hanging the suite
ADA = obs.Actor.user("u_ada", name="Ada Lovelace", email="ada@example.com")


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str) -> str:
    return file_id


@obs.tracked("file_downloaded", properties={"file_id": "{file_id}"})
def tracked_download(file_id: str) -> str:
    return file_id


@contextmanager
def audit_table_locked(url: str) -> Iterator[None]:
    """Another connection holds obs_audit_log: the database sink cannot write until the end."""
    if make_url(url).get_backend_name() == "sqlite":
        holder = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            yield
            holder.execute("COMMIT")
        finally:
            holder.close()
        return
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE obs_audit_log IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def audit_rows(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM obs_audit_log")).scalar_one())
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll *condition* until it holds or *timeout* passes (no flush can say it here)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def invariant_holds(stats: dict[str, Any]) -> bool:
    total = stats["queued"] + stats["delivered"] + stats["dropped"] + stats["failed"]
    return bool(stats["submitted"] == total)


def run_script(source: str, url: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run *source* in a fresh interpreter with OBS_URL set; return the JSON it printed last.

    The script may call ``lock_audit_table(url)`` (the child's side of audit_table_locked).
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LOCK_IN_CHILD) + textwrap.dedent(source)],
        env={**os.environ, "OBS_URL": url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# The child's side of audit_table_locked (a subprocess has no pytest fixtures).
_LOCK_IN_CHILD = """
    import sqlite3
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    def lock_audit_table(url):
        if make_url(url).get_backend_name() == "sqlite":
            holder = sqlite3.connect(make_url(url).database, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            return holder
        conn = sa.create_engine(url, poolclass=sa.NullPool).connect()
        conn.execute(sa.text("LOCK TABLE obs_audit_log IN ACCESS EXCLUSIVE MODE"))
        return conn
"""


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


class TestSinkIsolation:
    """Each sink has its own queue and worker: one that cannot deliver holds up no other."""

    def test_a_locked_database_delays_no_analytics_event(
        self, database_url: str, receiver: PosthogReceiver
    ) -> None:
        """While obs_audit_log is locked, PostHog events still arrive; the audits after it."""
        client = make_client(receiver)
        try:
            obs.configure(database_url, posthog=client)
            with audit_table_locked(database_url), obs.scope(actor=ADA):
                for i in range(20):
                    download(f"f_{i}")
                for i in range(20):
                    tracked_download(f"f_{i}")
                events = receiver.wait_for(20, timeout=10.0)
                stats = obs.stats()
                assert stats["by_sink"]["database"]["delivered"] == 0
                assert stats["by_sink"]["posthog"]["delivered"] == 20
            assert obs.flush(timeout=30.0)
            assert audit_rows(database_url) == 20
            assert sorted(e["properties"]["file_id"] for e in events) == sorted(
                f"f_{i}" for i in range(20)
            )
            stats = obs.stats()
            assert (stats["submitted"], stats["delivered"], stats["dropped"]) == (40, 40, 0)
        finally:
            client.shutdown()

    def test_a_stalled_posthog_delays_no_audit_row(
        self, database_url: str, receiver: PosthogReceiver
    ) -> None:
        """A PostHog client stuck in an upload (sync_mode, no answer) holds up no audit row."""
        client = make_client(receiver, sync_mode=True, timeout=5)
        try:
            obs.configure(database_url, posthog=client)
            with receiver.stalled(), obs.scope(actor=ADA):
                for i in range(5):
                    tracked_download(f"f_{i}")
                receiver.wait_for_requests(1)  # the PostHog sink is stuck in capture()
                for i in range(20):
                    download(f"f_{i}")
                assert wait_until(lambda: audit_rows(database_url) == 20, timeout=5.0)
        finally:
            client.shutdown()
        assert obs.flush(timeout=30.0)


class TestHonestCounts:
    """Counters say what happened: refusals are drops, stored records are delivered."""

    @pytest.mark.swallows_internal_errors
    def test_a_full_posthog_queue_is_dropped_and_flush_says_so(
        self, sqlite_url: str, receiver: PosthogReceiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        """capture() returning None counts as dropped; flush() is False while PostHog holds some."""
        caplog.set_level(logging.CRITICAL, logger="posthog")  # its own "queue is full" lines
        client = make_client(receiver, max_queue_size=5)
        try:
            obs.configure(sqlite_url, posthog=client)
            with receiver.stalled():
                with obs.scope(actor=ADA):
                    for i in range(40):
                        tracked_download(f"f_{i}")
                assert obs.flush(timeout=0.5) is False  # the client still holds events
                stats = obs.stats()
                sink = stats["by_sink"]["posthog"]
                assert sink["dropped"] >= 40 - 5 - 10  # its queue, plus one batch in flight
                assert sink["delivered"] + sink["dropped"] == 40
                assert stats["dropped"] == sink["dropped"]
                assert invariant_holds(stats)
            assert obs.flush(timeout=10.0)  # answered: the client's queue drains
            assert len(receiver.events) == sink["delivered"]
        finally:
            client.shutdown()

    def test_stored_records_are_delivered_and_crowd_out_nothing(self, database_url: str) -> None:
        """Committed transactions' records count delivered at once; queued ones still fit."""
        obs.configure(database_url, queue_size=50)
        app = sa.create_engine(database_url, poolclass=sa.NullPool)
        try:
            for i in range(300):
                with Session(app) as session, obs.scope(actor=ADA, session=session):
                    session.execute(sa.text("SELECT 1"))
                    download(f"tx_{i}")
                    session.commit()
            for i in range(40):
                obs.record_audit("queued", metadata={"i": i})
            stats = obs.stats()
            assert stats["dropped"] == 0
            assert obs.flush(timeout=30.0)
            stats = obs.stats()
            assert (stats["submitted"], stats["delivered"], stats["dropped"]) == (340, 340, 0)
            assert audit_rows(database_url) == 340
        finally:
            app.dispose()


class TestBoundedMemory:
    """Queues are bounded in bytes: a dead sink under large records holds max_queue_bytes."""

    def test_a_dead_sink_under_1_mb_records_stays_within_max_queue_bytes(
        self, database_url: str
    ) -> None:
        """400 records of 1 MB while the table is locked: peak RSS grows < 1.2x the bound.

        The records keep their 1 MB (max_metadata_bytes is raised), so the default bound
        (64 MiB) is what holds them back. glibc's allocator is told to return large blocks
        at once (MALLOC_MMAP_THRESHOLD_): its dynamic threshold would otherwise keep freed
        1 MB blocks in the heap, and RSS would measure the allocator, not obs_sdk.
        """
        budget = 64 * 1024 * 1024
        result = run_script(
            """
            import json, os, secrets
            import obs_sdk as obs

            def rss(field):
                # VmRSS now, VmHWM the peak: both belong to this process image (getrusage's
                # ru_maxrss would start at the parent's resident size, kept across execve).
                with open("/proc/self/status") as status:
                    line = next(line for line in status if line.startswith(field + ":"))
                return int(line.split()[1]) * 1024

            url = os.environ["OBS_URL"]
            obs.configure(url, max_metadata_bytes=2 * 1024 * 1024)
            obs.record_audit("warmup")
            assert obs.flush()
            holder = lock_audit_table(url)
            for _ in range(20):  # the caller's own temporaries, before the baseline
                secrets.token_hex(500_000)
            before = rss("VmRSS")  # resident now, not the peak so far: never understated
            for i in range(400):
                obs.record_audit("upload.stored", metadata={"body": secrets.token_hex(500_000)})
            obs.flush(timeout=1.0)  # the sink is dead: it returns False
            stats = obs.stats()
            print(json.dumps({"growth": rss("VmHWM") - before, "stats": stats}))
            os._exit(0)  # the locked table would hold the exit flush
            """,
            database_url,
            env={"MALLOC_MMAP_THRESHOLD_": "131072"},
        )
        stats = result["stats"]
        assert result["growth"] < 1.2 * budget, result
        assert stats["dropped"] > 0
        assert invariant_holds(stats)


class TestDropWarnings:
    """A drop is said: a WARNING at once, then at most one per sink per interval."""

    def test_drops_are_logged_once_per_sink_per_interval(
        self, sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Bursts of drops give one warning per place with the count and the reason."""
        caplog.set_level(logging.WARNING, logger="obs_sdk")
        obs.configure(sqlite_url, queue_size=20)

        def dropping_burst() -> None:
            for _ in range(10):
                for i in range(10):
                    obs.record_audit("burst", metadata={"i": i})
                obs.flush(timeout=0.05)  # the router routes; the sink cannot take them

        def drop_warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]

        with audit_table_locked(sqlite_url):
            dropping_burst()
            first = drop_warnings()
            dropping_burst()
            assert drop_warnings() == first  # within the interval: nothing more is said
            places = [w.split(":")[0] for w in first]
            assert len(places) == len(set(places)) >= 1  # one warning per place at most
            assert any(
                "queue full: the database (sqlite) sink is slower than callers" in w for w in first
            ), first
            monkeypatch.setattr(_dispatch, "DROP_WARNING_SECONDS", 0.0)
            dropping_burst()
            later = [w for w in drop_warnings() if w not in first]
            assert later, "the next interval says what was dropped since"
            counted = sum(int(w.split(" record")[0].split()[-1]) for w in [*first, *later])
            assert counted == obs.stats()["dropped"]
        assert obs.flush(timeout=30.0)


class TestNoPersonalDataInLogs:
    """Our own logs name records by id and action, never by their values."""

    @pytest.mark.swallows_internal_errors
    def test_a_failing_batch_is_logged_without_emails_or_metadata(
        self, database_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The table is gone: the failure log has ids, actions and counts, no personal data."""
        caplog.set_level(logging.DEBUG, logger="obs_sdk")
        obs.configure(database_url)
        engine = sa.create_engine(database_url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_audit_log"))
        engine.dispose()
        with obs.scope(actor=ADA):
            for i in range(3):
                obs.record_audit(
                    "refund.issued",
                    metadata={"customer_email": "grace@example.com", "note": f"secret plan {i}"},
                )
        assert obs.flush(timeout=30.0)
        assert obs.stats()["failed"] == 3
        text = caplog.text
        assert "refund.issued" in text
        for personal in ("ada@example.com", "Ada Lovelace", "grace@example.com", "secret plan"):
            assert personal not in text


class TestFork:
    """os.fork() never waits on a sink's I/O."""

    def test_fork_with_a_blocked_sink_returns_fast(self, database_url: str) -> None:
        """The database is locked and the sink is stuck in it: fork() returns in well under 5 s."""
        result = run_script(
            """
            import json, os, time
            import obs_sdk as obs

            url = os.environ["OBS_URL"]
            obs.configure(url)
            obs.record_audit("warmup")
            assert obs.flush()
            holder = lock_audit_table(url)
            for i in range(50):
                obs.record_audit("blocked", metadata={"i": i})
            assert not obs.flush(timeout=0.5)  # the sink is in its export, stuck on the lock
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            forked = time.monotonic() - started
            _, status = os.waitpid(pid, 0)
            print(json.dumps({"fork_seconds": forked, "status": status}))
            os._exit(0)
            """,
            database_url,
        )
        assert result["status"] == 0
        assert result["fork_seconds"] < 2.0, result
