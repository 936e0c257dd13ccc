"""Seal and verify throughput, and a multi-process run with background sealing.

``python -m benchmarks.seal [--database URL] [--processes 8] [--records 100000] [--quick]
[--baseline DIR] [--rounds N]``

1. Writers: *processes* processes each write records/processes audit records while
   sealing in the background (``configure(seal_key=..., seal_every=1)``); then one final
   ``seal()`` and ``verify()``: the number of findings must be 0 (no false findings).
2. Throughput: the same number of records, written unsealed, then ``seal()`` and
   ``verify()`` timed alone: records per second each (the goal on SQLite: 50,000), by
   the wall clock and per CPU second of the process that seals (on SQLite that includes
   the database's own work; on PostgreSQL the server's is not in it). The CPU figure
   stays meaningful on a busy machine; the load average is printed beside it.
   Each timing runs in a fresh process over the same records (the seal tables are
   dropped and made again first). With ``--baseline DIR`` (a directory holding another
   version's ``obs_sdk`` package, e.g. ``git archive main obs_sdk | tar -x -C DIR``),
   that version is timed too, alternating with this one for *rounds* rounds: before and
   after in one run, on one machine load. The best round of each is printed.

Prints Markdown. Timing varies by machine: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._seals._seal import seal
from obs_sdk._seals._signing import generate_key
from obs_sdk._seals._verify import verify


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


# Every version's seal tables (obs_seal_salts: before the salt moved into the leaf row).
_LEDGER_TABLES = ("obs_seal_leaves", "obs_seal_salts", "obs_seal_purges", "obs_seals")
_REPO = Path(__file__).resolve().parent.parent


def _fresh(url: str | None, directory: str, name: str) -> str:
    if url is None:
        return f"sqlite:///{Path(directory) / name}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in _LEDGER_TABLES:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
    obs.metadata().drop_all(engine)
    engine.dispose()
    return url


def _time_one(url: str) -> dict[str, Any]:
    """In a fresh process: remake the seal tables, then time seal() and verify()."""
    from obs_sdk._ledger._tables import create_tables

    private, public = generate_key()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in _LEDGER_TABLES:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
        create_tables(conn)  # this version's seal tables
    started, cpu = time.perf_counter(), time.process_time()
    sealed = seal(engine, key=private)
    seal_s, seal_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    report = verify(engine, public_key=public)
    verify_s, verify_cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    return {
        "load": os.getloadavg()[0],
        "sealed": sealed,
        "seal_s": seal_s,
        "seal_cpu": seal_cpu,
        "checked": report.records_checked,
        "verify_s": verify_s,
        "verify_cpu": verify_cpu,
        "findings": len(report.findings),
    }


def _timed(url: str, checkout: Path) -> dict[str, Any]:
    """Run _time_one in a child process that imports obs_sdk from *checkout*."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryDirectory() as cwd:  # so that no other obs_sdk comes first
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--time-one", url],
            env=env,
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["findings"]:
        raise SystemExit(f"verify() found {result['findings']} findings in {checkout}")
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round: the least time of each measure."""
    best = dict(runs[0])
    for key in ("seal_s", "seal_cpu", "verify_s", "verify_cpu"):
        best[key] = min(run[key] for run in runs)
    return best


def _throughput_rows(label: str, r: dict[str, Any]) -> list[str]:
    sealed, checked = r["sealed"], r["checked"]
    return [
        f"| seal() {label} | {sealed / r['seal_s']:,.0f} records/s "
        f"({sealed:,} in {r['seal_s']:.2f} s) | {sealed / r['seal_cpu']:,.0f} records/s |",
        f"| verify() {label} | {checked / r['verify_s']:,.0f} records/s "
        f"({checked:,} in {r['verify_s']:.2f} s) | {checked / r['verify_cpu']:,.0f} records/s |",
    ]


def main() -> None:
    """Run both parts and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seal", description=__doc__)
    parser.add_argument(
        "--database", help="a PostgreSQL URL (default: a SQLite file in a temp dir)"
    )
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="3 processes, 3,000 records")
    parser.add_argument("--baseline", type=Path, help="a directory holding another obs_sdk")
    parser.add_argument("--rounds", type=int, default=2, help="timings of each version")
    parser.add_argument("--time-one", help=argparse.SUPPRESS)  # the child of _timed()
    args = parser.parse_args()
    if args.time_one:
        print(json.dumps(_time_one(args.time_one)))
        return
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
        this: list[dict[str, Any]] = []
        before: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            if args.baseline:
                before.append(_timed(url, args.baseline.resolve()))
            this.append(_timed(url, _REPO))

    backend = "PostgreSQL" if args.database else "SQLite"
    print(f"## Seal and verify ({backend}, {args.processes} writer processes)\n")
    print("| measure | value |")
    print("| --- | --- |")
    print(
        f"| records written with background sealing | {report.records_checked:,} in {wrote:.1f} s |"
    )
    print(f"| seals made (background rounds + final) | {seals:,} (final seal took {final:,}) |")
    print(f"| findings after the run (must be 0) | {len(report.findings):,} |")
    print(f"| load average at the end | {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs |")
    rounds = f"best of {args.rounds} rounds, alternating" if args.baseline else "best round"
    loads = [run["load"] for run in this + before]
    print(f"\n### Throughput ({args.records:,} records; {rounds})\n")
    print(
        f"Load average (1 min) after each timing: {min(loads):.1f} to {max(loads):.1f} "
        f"on {os.cpu_count()} CPUs.\n"
    )
    print("| measure | wall clock | per CPU second |")
    print("| --- | --- | --- |")
    if before:
        for row in _throughput_rows("baseline", _best(before)):
            print(row)
    for row in _throughput_rows("this checkout", _best(this)):
        print(row)
    if before:
        old, new = _best(before), _best(this)
        print(
            f"\nCPU time per record, this checkout / baseline: seal "
            f"{new['seal_cpu'] / old['seal_cpu']:.2f}, verify "
            f"{new['verify_cpu'] / old['verify_cpu']:.2f}"
        )
    if report.findings:
        print("\n" + report.summary())
        raise SystemExit(1)


if __name__ == "__main__":
    main()
