"""Quota races and duplicate releases: threads on SQLite, separate processes on PostgreSQL.

Every worker starts at a barrier (threads: threading.Barrier; processes: each reports
"ready" with a warm connection, then all get "go" at once), so the charges really
overlap. The databases' own locks decide; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import obs_sdk as obs

pytestmark = pytest.mark.acceptance

OWNER = "org_race"
SIZE = 100
REPO_ROOT = Path(__file__).resolve().parents[2]

# A worker process: connect once, then per job: read it, say ready, wait for "go", meter
# once, print the outcome. Workers live for the module, so tests pay for imports once.
WORKER = """
import sys
import sqlalchemy as sa
from sqlalchemy.orm import Session
import obs_sdk as obs

engine = sa.create_engine(sys.argv[1])
for line in sys.stdin:
    action, object_id, size, quota = line.split()
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # a warm connection before the barrier
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        with Session(engine) as session:
            if action == "charge":
                size, quota = int(size), int(quota)
                with obs.metered_storage(
                    session, object_id=object_id, bytes=size, owner="org_race", quota=quota
                ):
                    pass
            else:
                with obs.metered_storage(session, object_id=object_id, release=True):
                    pass
            session.commit()
        print("ok", flush=True)
    except obs.QuotaExceeded:
        print("quota", flush=True)
    except Exception as exc:
        print("error", type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
"""


def totals(engine: sa.Engine) -> tuple[int, int, dict[str, int]]:
    """(usage, sum of the ledger, ledger) for OWNER."""
    with engine.connect() as conn:
        used = conn.execute(
            sa.text("SELECT bytes FROM obs_storage_usage WHERE owner = :o"), {"o": OWNER}
        ).scalar()
        rows = conn.execute(
            sa.text("SELECT object_id, bytes FROM obs_storage_objects WHERE owner = :o"),
            {"o": OWNER},
        ).all()
    objects = {r[0]: int(r[1]) for r in rows}
    return int(used or 0), sum(objects.values()), objects


def in_threads(engine: sa.Engine, jobs: list[tuple[str, str]], quota: int) -> list[str]:
    """Run (action, object_id) jobs at once on threads, one Session each; return outcomes."""
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(action: str, object_id: str) -> None:
        barrier.wait()
        try:
            with Session(engine) as session:
                if action == "charge":
                    meter = obs.metered_storage(
                        session, object_id=object_id, bytes=SIZE, owner=OWNER, quota=quota
                    )
                else:
                    meter = obs.metered_storage(session, object_id=object_id, release=True)
                with meter:
                    session.execute(sa.text("SELECT 1"))  # the body runs under the lock
                session.commit()
            outcome = "ok"
        except obs.QuotaExceeded:
            outcome = "quota"
        except Exception as exc:  # e.g. "database is locked": must never happen
            outcome = f"error {type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


class Workers:
    """Long-lived worker processes that run metering jobs released together."""

    def __init__(self, url: str, count: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            for _ in range(count)
        ]

    def _send(self, proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def _read(self, proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    def run(self, jobs: list[tuple[str, str]], quota: int) -> list[str]:
        """Run (action, object_id) jobs, one per process, started at once; return outcomes."""
        busy = self.procs[: len(jobs)]
        for proc, (action, object_id) in zip(busy, jobs, strict=True):
            self._send(proc, f"{action} {object_id} {SIZE} {quota}")
        assert [self._read(proc) for proc in busy] == ["ready"] * len(jobs)
        for proc in busy:
            self._send(proc, "go")
        return sorted(self._read(proc) for proc in busy)

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.fixture(scope="module")
def workers(postgres_url: str) -> Iterator[Workers]:
    """Six PostgreSQL worker processes for this module."""
    pool = Workers(postgres_url, 6)
    yield pool
    pool.close()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> sa.Engine:
    """The app's engine in pysqlite's default mode (no WAL, the driver's 5 s busy timeout)."""
    obs.configure(database=sqlite_url)
    return sa.create_engine(sqlite_url)


@pytest.fixture
def pg_engine(postgres_engine: sa.Engine) -> sa.Engine:
    """The test PostgreSQL database with the obs_ tables created."""
    obs.configure(database=postgres_engine.url.render_as_string(hide_password=False))
    return postgres_engine


N, K = 8, 3  # threads: 8 charges against a quota that fits 3
P, PK = 6, 2  # processes: 6 charges against a quota that fits 2


class TestSqliteThreads:
    def test_concurrent_charges_fit_exactly_k(self, sqlite_engine: sa.Engine) -> None:
        """8 threads charge 100 bytes against a 300-byte quota: exactly 3 succeed, no errors."""
        outcomes = in_threads(sqlite_engine, [("charge", f"doc_{i}") for i in range(N)], K * SIZE)
        assert outcomes == ["ok"] * K + ["quota"] * (N - K)
        used, ledger_sum, _ = totals(sqlite_engine)
        assert used == ledger_sum == K * SIZE

    def test_concurrent_charges_of_one_object_count_once(self, sqlite_engine: sa.Engine) -> None:
        """The same upload charged by 8 threads at once is counted once."""
        outcomes = in_threads(sqlite_engine, [("charge", "same")] * N, 10 * SIZE)
        assert outcomes == ["ok"] * N
        assert totals(sqlite_engine) == (SIZE, SIZE, {"same": SIZE})

    def test_concurrent_duplicate_releases_decrement_once(self, sqlite_engine: sa.Engine) -> None:
        """8 threads releasing one object give its bytes back once."""
        in_threads(sqlite_engine, [("charge", "x"), ("charge", "y")], 10 * SIZE)
        outcomes = in_threads(sqlite_engine, [("release", "x")] * N, 0)
        assert outcomes == ["ok"] * N
        assert totals(sqlite_engine) == (SIZE, SIZE, {"y": SIZE})


@pytest.mark.postgres
class TestPostgresProcesses:
    def test_concurrent_charges_fit_exactly_k(self, pg_engine: sa.Engine, workers: Workers) -> None:
        """6 processes charge 100 bytes against a 200-byte quota: exactly 2 succeed."""
        outcomes = workers.run([("charge", f"doc_{i}") for i in range(P)], PK * SIZE)
        assert outcomes == ["ok"] * PK + ["quota"] * (P - PK)
        used, ledger_sum, _ = totals(pg_engine)
        assert used == ledger_sum == PK * SIZE

    def test_concurrent_charges_of_one_object_count_once(
        self, pg_engine: sa.Engine, workers: Workers
    ) -> None:
        """The same upload charged by 6 processes at once is counted once (the ledger row lock)."""
        outcomes = workers.run([("charge", "same")] * P, 10 * SIZE)
        assert outcomes == ["ok"] * P
        assert totals(pg_engine) == (SIZE, SIZE, {"same": SIZE})

    def test_concurrent_duplicate_releases_decrement_once(
        self, pg_engine: sa.Engine, workers: Workers
    ) -> None:
        """6 processes releasing one object give its bytes back once."""
        assert workers.run([("charge", "x"), ("charge", "y")], 10 * SIZE) == ["ok", "ok"]
        outcomes = workers.run([("release", "x")] * P, 0)
        assert outcomes == ["ok"] * P
        assert totals(pg_engine) == (SIZE, SIZE, {"y": SIZE})
