"""An interleaved, single-process timing harness: ns per call, side by side, in one run.

Each entry is a wrapped ``f(x)``. Its calls are compiled into a block that runs the call 10
times unrolled inside ``for _ in range(n)`` (loop overhead ≈ 1 ns per call), ``n`` is
calibrated so that one block takes ``block_ms``, and every round runs one block of every
entry in a fresh random order, so drift falls on all entries alike. GC stays enabled, as in
production; gen-2 collections inside the timed blocks are counted. Background work an entry
leaves behind (span processors, queues) is flushed between blocks, outside the timed region,
so it cannot land in another entry's block.

The default clock is the process's CPU time (all its threads): on a small machine shared with
other work, wall time also counts the moments the OS ran someone else. Background threads
of the process (span processors, upload threads, obs_sdk's worker) are still counted, as
they would be in production. ``clock=time.perf_counter_ns`` gives wall time."""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

UNROLL = 10

_SYNC_BLOCK = """
def block(n, f, x, clock):
    t0 = clock()
    for _ in range(n):
{calls}
    return clock() - t0
"""

_ASYNC_BLOCK = """
async def block(n, f, x, clock):
    t0 = clock()
    for _ in range(n):
{calls}
    return clock() - t0
"""


def _compile_block(is_async: bool) -> Callable[..., Any]:
    call = "        await f(x)\n" if is_async else "        f(x)\n"
    source = (_ASYNC_BLOCK if is_async else _SYNC_BLOCK).format(calls=call * UNROLL)
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<block {'async' if is_async else 'sync'}>", "exec"), namespace)
    return namespace["block"]  # type: ignore[no-any-return]


_BLOCKS = {False: _compile_block(False), True: _compile_block(True)}


@dataclass
class Entry:
    """One contender: a wrapped ``f`` and what it needs around its blocks.

    ``context`` is entered around each block (outside the timed region), e.g. a scope or a
    transaction. ``between`` runs after each block, outside the timed region, to flush or
    discard background work. ``check`` runs after each block and raises if the block did not
    measure what it claims (e.g. records were dropped).
    """

    key: str
    label: str
    func: Callable[..., Any]
    kind: str  # "baseline" | "obs" | "obs-e2e" | "peer"
    records: str  # what the contender records per call, for the docs
    is_async: bool = False
    context: Callable[[], AbstractContextManager[Any]] = nullcontext
    between: Callable[[], None] | None = None
    check: Callable[[], None] | None = None
    block_scale: float = 1.0  # this entry's blocks take block_ms x block_scale
    finish: Callable[[], None] | None = None  # runs inside the timed region, after the calls


@dataclass
class Result:
    """Per-call nanoseconds of one entry over all rounds."""

    entry: Entry
    samples: list[float] = field(default_factory=list)
    calls: int = 0
    full_gcs: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return q1, q3

    @property
    def gcs_per_million(self) -> float:
        return self.full_gcs * 1e6 / self.calls if self.calls else 0.0


class _FullGcCounter:
    """Count gen-2 collections through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info.get("generation") == 2:
            self.count += 1

    def __enter__(self) -> _FullGcCounter:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class Harness:
    """Calibrate and run entries interleaved; see the module docstring for the method."""

    def __init__(
        self,
        entries: list[Entry],
        *,
        rounds: int,
        block_ms: float,
        seed: int = 1,
        clock: Callable[[], int] = time.process_time_ns,
    ) -> None:
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate entry keys: {keys}")
        self.entries = entries
        self.rounds = rounds
        self.block_ns = block_ms * 1e6
        self.clock = clock
        self.random = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.iterations: dict[str, int] = {}
        self.gcs = _FullGcCounter()

    def close(self) -> None:
        self.loop.close()

    def _block(self, entry: Entry, n: int) -> tuple[int, int]:
        """Run one block of *entry* (10 n calls); return its elapsed ns and full GCs."""
        block = _BLOCKS[entry.is_async]
        with entry.context():
            before = self.gcs.count
            if entry.is_async:
                coro: Coroutine[Any, Any, int] = block(n, entry.func, 1, self.clock)
                elapsed: int = self.loop.run_until_complete(coro)
            else:
                elapsed = block(n, entry.func, 1, self.clock)
            if entry.finish is not None:
                started = self.clock()
                entry.finish()
                elapsed += self.clock() - started
            full_gcs = self.gcs.count - before
        if entry.between is not None:
            entry.between()
        if entry.check is not None:
            entry.check()
        return elapsed, full_gcs

    def calibrate(self, entry: Entry) -> int:
        """Find n so that one block takes about ``block_ms`` (scaled); also warms the entry up."""
        target = self.block_ns * entry.block_scale
        n = 1
        while True:
            # The fastest of three: one thread switch or GC pause in a tiny block would
            # otherwise shrink n a hundredfold.
            elapsed = min(self._block(entry, n)[0] for _ in range(3))
            if elapsed >= target / 10 or n >= 1 << 24:
                break
            n *= 2
        n = max(1, round(n * target / max(elapsed, 1)))
        self._block(entry, n)  # one full-size warm-up block, not recorded
        return n

    def run(self, progress: Callable[[str], None] = lambda _: None) -> dict[str, Result]:
        """Calibrate every entry, then run the interleaved rounds; return results by key."""
        with self.gcs:
            return self._run(progress)

    def _run(self, progress: Callable[[str], None]) -> dict[str, Result]:
        for entry in self.entries:
            self.iterations[entry.key] = self.calibrate(entry)
            progress(f"calibrated {entry.key}: {self.iterations[entry.key] * UNROLL} calls/block")
        results = {e.key: Result(e) for e in self.entries}
        for round_no in range(self.rounds):
            order = list(self.entries)
            self.random.shuffle(order)
            for entry in order:
                n = self.iterations[entry.key]
                elapsed, full_gcs = self._block(entry, n)
                result = results[entry.key]
                result.full_gcs += full_gcs
                result.samples.append(elapsed / (n * UNROLL))
                result.calls += n * UNROLL
            progress(f"round {round_no + 1}/{self.rounds}")
        return results
