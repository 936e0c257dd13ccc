"""Delivery under load: a caller that never pauses, and what a dropped record costs it.

* **Busy caller.** One thread calls ``@audited`` (2 template fields, inside a scope) in a
  tight loop for a fixed time while obs_sdk delivers; reported: calls/s, delivered rows/s
  during the window, dropped %, and delivered rows/s against the idle-caller sustained rate
  (the same call paced so that nothing is dropped: throughput's 1-thread row, measured
  again here). The caller never yields: the router and the sink's worker get the GIL only
  when the interpreter takes it from the caller (every ``sys.getswitchinterval()``) or when
  the caller's thread waits in the kernel.
* **Drop path vs queued path.** CPU ns per call when the intake has room (the record is
  queued) and when it is full (the record is dropped and counted), the router held so that
  the intake stays as it is; ``@audited`` with 2 fields and ``@tracked`` (the generated
  wrapper's lane), and ``@audited(when="always")`` (``emit()``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import obs_sdk as obs
from benchmarks import contenders, throughput
from benchmarks.report import TIMES, markdown_table
from obs_sdk._delivery._dispatch import dispatcher

DROP_QUEUE = 100_000  # the intake's bound in the drop-path rows
DROP_CALLS = 20_000  # calls per timed block there


def _busy(target: throughput.Target, seconds: float) -> dict[str, float]:
    """One caller, no pauses, for *seconds*: calls/s, delivered/s and dropped %."""
    call = throughput._audited()
    with target.fresh() as (url, prefix):
        obs.configure(database=url, table_prefix=prefix, service="bench", handle_signals=False)
        with throughput._request_scope():
            for i in range(200):
                call(i)
        obs.flush(timeout=30.0)
        before = obs.stats()
        calls = 0
        with throughput._request_scope():
            started = time.perf_counter()
            while True:
                for i in range(1000):
                    call(i)
                calls += 1000
                elapsed = time.perf_counter() - started
                if elapsed >= seconds:
                    break
        after = obs.stats()
        obs.flush(timeout=120.0)
        obs.shutdown()
    delivered = after["delivered"] - before["delivered"]
    dropped = after["dropped"] - before["dropped"]
    return {
        "calls": calls / elapsed,
        "delivered": delivered / elapsed,
        "dropped": 100.0 * dropped / calls,
    }


def busy_caller(
    workdir: Path,
    *,
    quick: bool,
    postgres_url: str | None,
    progress: Callable[[str], None],
) -> str:
    """The busy-caller table, SQLite and (when given) PostgreSQL."""
    seconds = 1.0 if quick else 3.0
    repeats = 1 if quick else 3
    calls = 10_000 if quick else 50_000
    workdir = workdir / "busy"  # files of their own: Target numbers its files from 1
    workdir.mkdir(exist_ok=True)
    targets = [throughput.Target("SQLite", "", workdir)]
    if postgres_url:
        targets.append(throughput.Target("PostgreSQL", postgres_url, workdir))
    rows = []
    for target in targets:
        progress(f"{target.name}: busy caller")
        runs = [_busy(target, seconds) for _ in range(repeats)]
        idle = statistics.median(target.obs_sustained(calls, 1).rate for _ in range(repeats))
        busy = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rows.append(
            (
                target.name,
                f"{busy['calls']:,.0f}",
                f"{busy['delivered']:,.0f}",
                f"{busy['dropped']:.1f} %",
                f"{idle:,.0f}",
                f"{busy['delivered'] / idle:.2f}{TIMES}",
            )
        )
    if not postgres_url:
        rows.append(("PostgreSQL", "—", "—", "—", "—", "skipped: set OBS_TEST_POSTGRES_URL"))
    header = (
        "database",
        "calls/s",
        "delivered rows/s",
        "dropped",
        "idle-caller sustained rows/s",
        "delivered / sustained (target ≥ 0.5)",
    )
    note = (
        f"One thread calls `@audited` (2 fields) for {seconds:g} s without pausing, default "
        f'queues (queue_size=10,000, overflow="drop"); median of {repeats}. Delivered rows/s '
        "counts what the database sink wrote during the window. Sustained: the same call "
        "paced to 0 drops (throughput's 1-thread row).\n"
    )
    return note + "\n" + markdown_table(header, rows, right_from=1)


def _cpu_ns_per_call(call: Callable[[Any], Any], before_block: Callable[[], None]) -> float:
    """Median CPU ns per call over blocks of DROP_CALLS calls; *before_block* untimed."""
    samples = []
    for _ in range(7):
        before_block()
        started = time.process_time_ns()
        for i in range(DROP_CALLS):
            call(i)
        samples.append((time.process_time_ns() - started) / DROP_CALLS)
    return statistics.median(samples)


def drop_path(workdir: Path, progress: Callable[[str], None]) -> str:
    """CPU ns per call: record queued (room in the intake) and dropped (the intake full)."""
    progress("drop path vs queued path")
    obs.configure(
        database=f"sqlite:///{workdir / 'drop.db'}",
        posthog=_Discarding(),
        service="bench",
        queue_size=DROP_QUEUE,
        max_queue_bytes=contenders.QUEUE_BYTES,
        handle_signals=False,
    )
    variants = [
        ("@audited, 2 fields", contenders.audited_with(2)(contenders.f)),
        ("@tracked, 1 property", obs.tracked("item_read", properties={"x": "{x}"})(contenders.f)),
        (
            '@audited, 2 fields, when="always" (emit(), not the lane)',
            obs.audited(
                "item.read",
                when="always",
                resource=obs.Resource("item", "{x}"),
                metadata={"value": "{result}"},
            )(contenders.f),
        ),
    ]
    intake = dispatcher.queue
    rows = []
    with contenders.router_held(), obs.scope(actor=contenders.ACTOR, organization="org_1"):
        for label, call in variants:
            call(0)  # lazy caches, outside the timing
            queued = _cpu_ns_per_call(call, intake.clear)
            filler = intake[0]

            def fill(filler: Any = filler) -> None:
                intake.clear()
                intake.extend([filler] * DROP_QUEUE)

            dropped = _cpu_ns_per_call(call, fill)
            rows.append((label, f"{queued:,.0f}", f"{dropped:,.0f}", f"{dropped / queued:.2f}"))
        intake.clear()
    stats = obs.stats()
    obs.shutdown()
    note = (
        f"CPU ns per call, median of 7 blocks of {DROP_CALLS:,} calls, the router held. "
        f"Queued: the intake has room. Dropped: it holds queue_size={DROP_QUEUE:,} records, "
        f"so each call's record is dropped and counted ({stats['dropped']:,} counted here).\n"
    )
    header = ("record", "queued ns/call", "dropped ns/call", "dropped / queued")
    return note + "\n" + markdown_table(header, rows, right_from=1)


class _Discarding:
    """A stand-in PostHog client: analytics records have a sink, nothing is sent anywhere."""

    def capture(self, *args: Any, **kwargs: Any) -> str:
        return "uuid"

    def group_identify(self, *args: Any, **kwargs: Any) -> str:
        return "uuid"

    def flush(self, timeout_seconds: float | None = None) -> None:
        return None
