"""Many processes on one PostgreSQL: audited calls, quotas and idempotent deliveries at scale.

``python -m benchmarks.scale --database-url postgresql+psycopg://...`` starts PROCESSES worker
processes of THREADS threads each (default 8 x 4) on fresh ``scale_`` tables, lets them all
go at once, prints progress, and reports rows/s and the checks below. Every thread runs
JOBS jobs; one job is:

* READS plain ``@audited`` calls (``item.read``): the pipeline delivers them;
* one upload event delivered twice, as a webhook provider retries: once by this thread
  and once by the same thread index of the next process, at about the same moment. The
  handler is ``@obs.idempotent`` (``once()`` on the event id) and ``@audited``
  (``file.uploaded``, written by the session's commit), and charges the object's bytes with
  ``metered_storage`` under its owner's quota (16 owners, quota for about 90 % of their
  objects, so some charges are refused with ``QuotaExceeded``).

Callers are configured with ``overflow="block"`` (the compliance setting: a caller waits
for room rather than drop). Checked at the end, from the database and every process's
``obs.stats()``:

* nothing lost: one ``item.read`` row per call; one ``file.uploaded`` row, one ledger row
  and one idempotency key per event a delivery committed; every event was either
  committed once or refused for its quota by both deliveries; 0 dropped, 0 failed;
* nothing doubled: no event committed twice, no audit id twice;
* quota never exceeded: each owner's usage ≤ its quota, and equal to its ledger's sum.

``run()`` is what ``tests/acceptance/test_scale.py`` calls with a smaller scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "scale_"
OWNERS = 16
OBJECT_BYTES = 1_000
QUOTA_SHARE = 0.9  # an owner's quota holds about this share of its objects
PROGRESS_EVERY = 20  # jobs between two progress lines of a thread


@dataclass(frozen=True)
class Scenario:
    processes: int = 8
    threads: int = 4
    jobs: int = 200  # per thread
    reads: int = 30  # plain audited calls per job

    @property
    def events(self) -> int:
        return self.processes * self.threads * self.jobs

    @property
    def calls(self) -> int:
        """Audited calls made: the reads and both deliveries of every event."""
        return self.events * (self.reads + 2)

    def owner(self, event: int) -> str:
        return f"org_{event % OWNERS}"

    def quota(self) -> int:
        per_owner = -(-self.events // OWNERS)
        return int(per_owner * QUOTA_SHARE) * OBJECT_BYTES


def event_id(s: Scenario, process: int, thread: int, job: int) -> int:
    """Consecutive across the threads of one job: their owners (event % OWNERS) differ."""
    return job * s.processes * s.threads + process * s.threads + thread


@dataclass
class Result:
    """What run() measured and checked; ``problems`` is empty when every check held."""

    scenario: Scenario
    seconds: float
    rows: int
    committed: int
    refused: int
    duplicates: int
    problems: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


# -- the worker process ----------------------------------------------------------------------


def _worker(url: str, s: Scenario, process: int) -> None:
    """One process: THREADS threads of JOBS jobs after "go"; prints its outcome as JSON."""
    from sqlalchemy.orm import Session

    import obs_sdk as obs

    obs.configure(
        url,
        table_prefix=PREFIX,
        service="scale",
        create_tables=False,
        overflow="block",
        block_timeout=10.0,
        handle_signals=False,
    )
    engine = sa.create_engine(url, pool_size=s.threads, max_overflow=0)

    @obs.audited("item.read", resource=obs.Resource("item", "{item}"))
    def read(item: int) -> int:
        return item

    @obs.idempotent(key="upload:{event}")
    @obs.audited("file.uploaded", resource=obs.Resource("file", "{event}"))
    def upload(session: Session, event: int) -> int:
        with obs.metered_storage(
            session,
            object_id=f"obj_{event}",
            bytes=OBJECT_BYTES,
            owner=s.owner(event),
            quota=s.quota(),
        ):
            pass
        return event

    outcome: dict[str, list[int]] = {"committed": [], "refused": [], "duplicates": []}
    errors: list[str] = []
    lock = threading.Lock()

    def deliver(event: int) -> None:
        with Session(engine) as session:
            try:
                done = upload(session, event)
                session.commit()
            except obs.QuotaExceeded:
                session.rollback()
                kind = "refused"
            else:
                kind = "committed" if done is not None else "duplicates"
        with lock:
            outcome[kind].append(event)

    def thread_main(thread: int) -> None:
        actor = obs.Actor.user(f"u_{process}_{thread}")
        try:
            for job in range(s.jobs):
                with obs.scope(actor=actor, organization=f"org_{job % OWNERS}"):
                    for i in range(s.reads):
                        read(job * s.reads + i)
                    deliver(event_id(s, process, thread, job))
                    deliver(event_id(s, (process - 1) % s.processes, thread, job))
                if job % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                    with lock:  # one whole line at a time: print() from threads interleaves
                        sys.stdout.write(f"progress {PROGRESS_EVERY}\n")
                        sys.stdout.flush()
        except Exception as exc:  # reported, and the run fails its checks
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    print("ready", flush=True)
    sys.stdin.readline()
    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(s.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flushed = obs.flush(timeout=120.0)
    stats = obs.stats()
    obs.shutdown()
    engine.dispose()
    print(
        json.dumps(
            {
                **outcome,
                "errors": errors,
                "flushed": flushed,
                "dropped": stats["dropped"],
                "failed": stats["failed"],
            }
        ),
        flush=True,
    )


# -- the run ---------------------------------------------------------------------------------


def run(url: str, s: Scenario, progress: Any = None) -> Result:
    """Run *s* on PostgreSQL at *url* (fresh ``scale_`` tables, dropped after)."""
    import obs_sdk as obs
    from obs_sdk._ledger._tables import tables

    say = progress or (lambda message: None)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    t = tables(PREFIX)
    t.metadata.drop_all(engine)  # leftovers of an interrupted run
    obs.create_tables(engine, PREFIX)
    config = json.dumps(s.__dict__)
    errs = [tempfile.TemporaryFile("w+") for _ in range(s.processes)]  # noqa: SIM115 (closed below)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scale", "--worker", str(p), config, url],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        for p, err in enumerate(errs)
    ]
    try:
        for proc, err in zip(procs, errs, strict=True):
            line = proc.stdout.readline() if proc.stdout else ""
            if line != "ready\n":
                raise RuntimeError(f"a worker did not start: {line!r} {_stderr(proc, err)}")
        say(f"{s.processes} processes x {s.threads} threads ready; {s.calls:,} audited calls")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = _collect(procs, errs, s, say)
        seconds = time.perf_counter() - started
        result = _check(engine, t, s, outcomes, seconds)
    finally:
        for proc, err in zip(procs, errs, strict=True):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, err):
                if stream is not None:
                    stream.close()
        t.metadata.drop_all(engine)
        engine.dispose()
    say(f"done in {result.seconds:.1f} s: {result.rows_per_second:,.0f} rows/s")
    return result


def _stderr(proc: subprocess.Popen[str], err: Any) -> str:
    """The end of what a worker said on stderr (killed first if it still runs)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    err.seek(0)
    return str(err.read())[-2000:]


def _collect(
    procs: list[subprocess.Popen[str]], errs: list[Any], s: Scenario, say: Any
) -> list[dict[str, Any]]:
    """Read every worker's progress lines and final JSON (a thread per pipe)."""
    done = [0]
    results: list[dict[str, Any] | None] = [None] * len(procs)
    lock = threading.Lock()

    def read(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("progress "):
                with lock:
                    done[0] += int(line.split()[1])
            elif line.startswith("{"):
                results[i] = json.loads(line)

    readers = [threading.Thread(target=read, args=pair) for pair in enumerate(procs)]
    for r in readers:
        r.start()
    total = s.processes * s.threads * s.jobs
    last = time.monotonic()
    while any(r.is_alive() for r in readers):
        time.sleep(0.1)
        if time.monotonic() - last >= 5.0:
            last = time.monotonic()
            say(f"{done[0]:,} / {total:,} jobs")
    for i, (proc, err, result) in enumerate(zip(procs, errs, results, strict=True)):
        if proc.wait() != 0 or result is None:
            raise RuntimeError(f"worker {i} failed ({proc.returncode}): {_stderr(proc, err)}")
    return [r for r in results if r is not None]


def _check(
    engine: sa.Engine, t: Any, s: Scenario, outcomes: list[dict[str, Any]], seconds: float
) -> Result:
    problems: list[str] = []
    committed = [e for o in outcomes for e in o["committed"]]
    refused = [e for o in outcomes for e in o["refused"]]
    duplicates = [e for o in outcomes for e in o["duplicates"]]
    for o in outcomes:
        problems += o["errors"]
        if not o["flushed"] or o["dropped"] or o["failed"]:
            problems.append(
                f"a process: flushed={o['flushed']} dropped={o['dropped']} failed={o['failed']}"
            )
    if len(committed) != len(set(committed)):
        problems.append(f"{len(committed) - len(set(committed))} events committed twice")
    deliveries = len(committed) + len(refused) + len(duplicates)
    if deliveries != 2 * s.events:
        problems.append(f"{deliveries} deliveries accounted for, not {2 * s.events}")
    for event in set(range(s.events)) - set(committed):
        if refused.count(event) != 2:  # never committed: both deliveries found the quota full
            problems.append(f"event {event} was neither committed nor refused twice")
            break
    with engine.connect() as conn:
        rows, distinct = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(t.audit.c.id)))
        ).one()
        by_action = dict(
            conn.execute(
                sa.select(t.audit.c.action, sa.func.count()).group_by(t.audit.c.action)
            ).all()
        )
        uploaded = conn.execute(
            sa.select(t.audit.c.resource_id, sa.func.count())
            .where(t.audit.c.action == "file.uploaded")
            .group_by(t.audit.c.resource_id)
            .having(sa.func.count() > 1)
        ).all()
        keys = conn.execute(sa.select(sa.func.count()).select_from(t.idempotency_keys)).scalar_one()
        ledger = dict(
            conn.execute(
                sa.select(
                    t.storage_objects.c.owner, sa.func.sum(t.storage_objects.c.bytes)
                ).group_by(t.storage_objects.c.owner)
            ).all()
        )
        objects = conn.execute(
            sa.select(sa.func.count()).select_from(t.storage_objects)
        ).scalar_one()
        usage = dict(
            conn.execute(sa.select(t.storage_usage.c.owner, t.storage_usage.c.bytes)).all()
        )
    if rows != distinct:
        problems.append(f"{rows - distinct} audit ids written twice")
    expected = {"item.read": s.events * s.reads, "file.uploaded": len(set(committed))}
    if by_action != expected:
        problems.append(f"audit rows by action {by_action}, expected {expected}")
    if uploaded:
        problems.append(f"{len(uploaded)} events have more than one file.uploaded row")
    if keys != len(set(committed)) or objects != len(set(committed)):
        problems.append(f"{keys} keys and {objects} ledger rows for {len(set(committed))} events")
    for owner, used in usage.items():
        if used > s.quota():
            problems.append(f"{owner} uses {used} bytes over its quota of {s.quota()}")
        if used != ledger.get(owner, 0):
            problems.append(f"{owner}: usage {used} != ledger {ledger.get(owner)}")
    return Result(s, seconds, int(rows), len(committed), len(refused), len(duplicates), problems)


def report(result: Result) -> str:
    s = result.scenario
    lines = [
        f"{s.processes} processes x {s.threads} threads, {s.calls:,} audited calls "
        f"({s.events * s.reads:,} plain, {2 * s.events:,} idempotent deliveries of "
        f"{s.events:,} events) in {result.seconds:.1f} s",
        f"audit rows written: {result.rows:,} ({result.rows_per_second:,.0f} rows/s; "
        f"{s.calls / result.seconds:,.0f} audited calls/s)",
        f"events committed once: {result.committed:,}; duplicates skipped: "
        f"{result.duplicates:,}; deliveries refused for quota: {result.refused:,}",
        "checks: " + ("all held" if not result.problems else "; ".join(result.problems[:10])),
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, process, config, url = sys.argv
        _worker(url, Scenario(**json.loads(config)), int(process))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("OBS_TEST_POSTGRES_URL"),
        help="PostgreSQL URL (default: $OBS_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--processes", type=int, default=Scenario.processes)
    parser.add_argument("--threads", type=int, default=Scenario.threads)
    parser.add_argument("--jobs", type=int, default=Scenario.jobs, help="jobs per thread")
    parser.add_argument("--reads", type=int, default=Scenario.reads, help="reads per job")
    args = parser.parse_args()
    if not args.database_url or not args.database_url.startswith("postgresql"):
        parser.error("--database-url postgresql+psycopg://... is required")
    s = Scenario(args.processes, args.threads, args.jobs, args.reads)
    result = run(args.database_url, s, lambda m: print(f"  … {m}", file=sys.stderr, flush=True))
    print(report(result))
    sys.exit(1 if result.problems else 0)


if __name__ == "__main__":
    main()
