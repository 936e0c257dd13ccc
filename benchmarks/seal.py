"""Seal and verify throughput, and a multi-process run with background sealing.

``python -m benchmarks.seal [--database URL] [--processes 8] [--records 100000] [--quick]``

1. Writers: *processes* processes each write records/processes audit records while
   sealing in the background (``configure(seal_key=..., seal_every=1)``); then one final
   ``seal()`` and ``verify()``: the number of findings must be 0 (no false findings).
2. Throughput: the same number of records, written unsealed, then ``seal()`` and
   ``verify()`` timed alone: records per second each (the goal on SQLite: 50,000), by
   the wall clock and per CPU second of this process (on SQLite that includes the
   database's own work; on PostgreSQL the server's is not in it). The CPU figure stays
   meaningful on a busy machine; the load average is printed beside it.

Prints Markdown. Timing varies by machine: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._seal import seal
from obs_sdk._signing import generate_key
from obs_sdk._verify import verify


def _write(url: str, n: int, worker: int, key: bytes | None) -> None:
    sealing = {"seal_key": key, "seal_every": 1.0} if key else {}
    obs.configure(url, handle_signals=False, queue_size=max(n, 10_000), overflow="block", **sealing)
    with obs.scope(
        actor=obs.Actor.user(f"u_{worker}", name="Ada Lovelace", email=f"u_{worker}@example.com"),
        organization=f"org_{worker % 4}",
        ip="203.0.113.5",
        user_agent="bench/1.0",
    ):
        for i in range(n):
            obs.record_audit(
                "file.read",
                resource=obs.Resource("file", str(i)),
                metadata={"i": i, "bytes": i * 512},
            )
    obs.shutdown(timeout=120)


def _run_writers(url: str, processes: int, records: int, key: bytes | None) -> float:
    ctx = multiprocessing.get_context("spawn")
    per = records // processes
    started = time.perf_counter()
    procs = [ctx.Process(target=_write, args=(url, per, w, key)) for w in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a writer process exited {p.exitcode}")
    return time.perf_counter() - started


def _fresh(url: str | None, directory: str, name: str) -> str:
    if url is None:
        return f"sqlite:///{Path(directory) / name}"
    engine = sa.create_engine(url)
    obs.metadata().drop_all(engine)
    engine.dispose()
    return url


def main() -> None:
    """Run both parts and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seal", description=__doc__)
    parser.add_argument(
        "--database", help="a PostgreSQL URL (default: a SQLite file in a temp dir)"
    )
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="3 processes, 3,000 records")
    args = parser.parse_args()
    if args.quick:
        args.processes, args.records = 3, 3_000
    private, public = generate_key()
    with tempfile.TemporaryDirectory() as directory:
        url = _fresh(args.database, directory, "writers.db")
        wrote = _run_writers(url, args.processes, args.records, private)
        engine = sa.create_engine(url)
        final = seal(engine, key=private)
        report = verify(engine, public_key=public)
        with engine.connect() as conn:
            seals = conn.execute(sa.text("SELECT count(*) FROM obs_seals")).scalar()
        engine.dispose()

        url = _fresh(args.database, directory, "throughput.db")
        _run_writers(url, args.processes, args.records, None)
        engine = sa.create_engine(url)
        started, cpu = time.perf_counter(), time.process_time()
        sealed = seal(engine, key=private)
        seal_s, seal_cpu = time.perf_counter() - started, time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        checked = verify(engine, public_key=public)
        verify_s, verify_cpu = time.perf_counter() - started, time.process_time() - cpu
        engine.dispose()

    backend = "PostgreSQL" if args.database else "SQLite"
    print(f"## Seal and verify ({backend}, {args.processes} writer processes)\n")
    print("| measure | value |")
    print("| --- | --- |")
    print(
        f"| records written with background sealing | {report.records_checked:,} in {wrote:.1f} s |"
    )
    print(f"| seals made (background rounds + final) | {seals:,} (final seal took {final:,}) |")
    print(f"| findings after the run (must be 0) | {len(report.findings):,} |")
    print(
        f"| seal() throughput | {sealed / seal_s:,.0f} records/s ({sealed:,} in {seal_s:.2f} s) |"
    )
    print(f"| seal() per CPU second of this process | {sealed / seal_cpu:,.0f} records/s |")
    checked_n = checked.records_checked
    print(
        f"| verify() throughput | {checked_n / verify_s:,.0f} records/s "
        f"({checked_n:,} in {verify_s:.2f} s) |"
    )
    print(f"| verify() per CPU second of this process | {checked_n / verify_cpu:,.0f} records/s |")
    print(f"| load average during the run | {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs |")
    if report.findings:
        print("\n" + report.summary())
        raise SystemExit(1)


if __name__ == "__main__":
    main()
