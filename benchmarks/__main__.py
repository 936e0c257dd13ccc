"""Run the benchmarks: ``python -m benchmarks`` (full, ~3 min) or ``--quick`` (CI, < 60 s).

Prints Markdown: the machine and package versions, the per-call overhead of every contender
with ratios to the bare call and to the closure floor, the budget ratios, how the hot path
grows with template and scope fields, memory per queued record, and sustained throughput
against raw ``executemany``. ``--plot`` writes the overhead chart (PNG).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import changes, contenders, delivery, metering, peers, report, throughput
from benchmarks.harness import Entry, Harness

FULL = {"rounds": 51, "block_ms": 5.0, "scaling_rounds": 25}
QUICK = {"rounds": 7, "block_ms": 2.0, "scaling_rounds": 5}
CLOCKS = {"cpu": time.process_time_ns, "wall": time.perf_counter_ns}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (CI): < 60 s")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 51; quick 7)")
    parser.add_argument("--block-ms", type=float, help="target ms per block (default 5; quick 2)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: the process's CPU time, all threads (default); wall: perf_counter",
    )
    parser.add_argument("--plot", type=Path, help="write the overhead chart here (PNG)")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="skip the throughput and metering rows"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("OBS_TEST_POSTGRES_URL"),
        help="PostgreSQL URL for the throughput rows (default: $OBS_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the round order")
    return parser.parse_args()


def _progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def _section(title: str) -> None:
    print(f"\n## {title}\n")


def main() -> None:
    args = _parse()
    preset = QUICK if args.quick else FULL
    rounds = args.rounds or preset["rounds"]
    block_ms = args.block_ms or preset["block_ms"]
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    print(
        f"# obs_sdk benchmarks ({mode}: {rounds} rounds of {block_ms:g} ms blocks, "
        f"{args.clock} clock)\n"
    )
    print(report.markdown_table(("item", "value"), report.environment(), right_from=2))

    with tempfile.TemporaryDirectory(prefix="obs-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_throughput:
            # First, before any peer is set up: nothing else has hooked threads or engines yet.
            _section("Throughput: sustained audited calls/s with 0 drops, next to raw executemany")
            print(
                throughput.run(
                    workdir, quick=args.quick, postgres_url=args.postgres, progress=_progress
                )
            )
            _section("Busy caller: one thread that never pauses, while obs_sdk delivers")
            print(
                delivery.busy_caller(
                    workdir, quick=args.quick, postgres_url=args.postgres, progress=_progress
                )
            )
            _section("metered_storage next to hand-written SQL with the same guarantees")
            print(metering.report(workdir, quick=args.quick, postgres_url=args.postgres))
            _section("@audited(changes=True) next to the same call undecorated, with its commit")
            print(changes.report(workdir, quick=args.quick, postgres_url=args.postgres))

        server = peers.DiscardServer()
        client = peers.posthog_client(server.url)
        control = contenders.ObsControl(workdir, client)
        entries: list[Entry] = contenders.baseline_entries() + contenders.obs_entries(control)
        entries += peers.otel_entries() + peers.posthog_entries(client)
        missing: list[peers.Missing] = []
        for setup in (peers.logfire_entries, peers.sentry_entries):
            found = setup()
            if isinstance(found, peers.Missing):
                missing.append(found)
            else:
                entries += found
        gc.collect()

        clock = CLOCKS[args.clock]
        _section(f"Per-call overhead ({args.clock} ns per call of f(x), interleaved, one process)")
        harness = Harness(entries, rounds=rounds, block_ms=block_ms, seed=args.seed, clock=clock)
        try:
            results = harness.run(_progress)
        finally:
            harness.close()
        print(report.overhead_table(results, missing))
        print("\nBudget ratios (medians of this run):\n")
        print("\n".join(report.budget_lines(results)))
        print("\nWhat each contender records per call:\n")
        print(report.records_table(results))

        _section("How @audited grows with template fields and scope fields")
        baselines = [e for e in contenders.baseline_entries() if e.key in ("bare", "floor")]
        scaling = Harness(
            baselines + contenders.scaling_entries(control),
            rounds=preset["scaling_rounds"] if args.rounds is None else rounds,
            block_ms=block_ms,
            seed=args.seed,
            clock=clock,
        )
        try:
            scaled = scaling.run(_progress)
        finally:
            scaling.close()
        print(report.overhead_table(scaled, []))

        _section("Memory per queued record (tracemalloc)")
        print(throughput.memory_per_record(control, calls=5_000 if args.quick else 50_000))

        if args.plot is not None:
            report.plot_overhead(results, args.plot, args.clock)
            print(f"\nPlot written to {args.plot}")
        control.close()

        _section("Drop path vs queued path (what a caller pays when its record is dropped)")
        print(delivery.drop_path(workdir, _progress))
        client.shutdown()
        server.close()
    print(f"\n_Total time: {time.perf_counter() - started:.0f} s._")


if __name__ == "__main__":
    main()
