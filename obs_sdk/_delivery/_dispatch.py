"""Delivery: one intake for the hot path, then one bounded pipeline per sink.

::

    callers --append--> intake --route: render, measure, admit--> queue per sink --> export

The hot path appends raw record tuples to the intake, a deque (atomic under the GIL, no lock).
Routing takes them in slices and renders each record once (a sink that alone takes a kind may
render it its own way: the SQL sink straight into its driver's row), measures it, and admits
it to the queue of every sink that takes its kind, within that sink's bounds: ``queue_size``
records and its share of ``max_queue_bytes`` (see ``Limits``). One thread routes at a time:
a sink's worker that ran out of work (so a healthy sink renders and writes on one thread),
or the router thread ("obs-sdk-dispatch") when no worker did for a while. Routing never
waits on a sink, so a sink that hangs delays no other: its queue fills, and records meant
for it are dropped, counted and reported. Each sink has its own worker thread
("obs-sdk-sink-<name>") that exports batches, retries transient errors with backoff and
retries a batch that failed for good row by row, so one bad record fails alone.

One lock guards the state machine, the queues' bookkeeping and the counters; one condition
on it carries every wait (flush, a full queue in ``overflow="block"``). The lock is never
held across a sink's I/O, so a fork never waits on one::

    WAITING --install()--> RUNNING --shutdown()--> STOPPING --threads done or deadline--> WAITING

WAITING: no sinks, records wait in the intake (before configure(), after shutdown()).
RUNNING: the router and the workers deliver. STOPPING: the workers deliver what their queues
hold until the deadline; new records wait in the intake for the next configuration.

Accounting. Each record kind has a primary sink (the first configured that takes it: the
audit log for audits, PostHog for analytics events); the top-level counters follow a record
to its primary sink, and mirrors (OpenTelemetry logs) count in ``by_sink`` only. Records a
transaction already stored (``(STORED, record)``) are submitted and delivered at once; they
only go to the mirrors' queues, never through the intake.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from obs_sdk._delivery._pipelines import (
    BATCH_SIZE,
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_QUEUE_SIZE,
    DELIVERED,
    DROPPED,
    FAILED,
    INTERVAL_SECONDS,
    LINGER_SECONDS,
    MAX_BATCH_SIZE,
    OVERFLOW_MODES,
    DropLog,
    Limits,
    Pipeline,
    Run,
    State,
    export,
    sink_stats,
    take_batch,
)
from obs_sdk._delivery._sinks import Sink
from obs_sdk._guard import count_error, counters, internal_errors
from obs_sdk._hotpath._records import (
    EVENT,
    SPEC,
    STORED,
    RawRecord,
    approx_bytes,
    raw_size,
    rendered_bound,
)
from obs_sdk._scope._context import suppressed

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_BLOCK_TIMEOUT",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "MAX_BATCH_SIZE",
    "OVERFLOW_MODES",
    "Dispatcher",
    "Limits",
    "State",
    "dispatcher",
]

logger = logging.getLogger("obs_sdk")

ROUTE_SLICE = 1024  # records the router renders between two admissions
# How long the router sleeps between looks at the intake, when the hot path has not woken it
# (it does at every BATCH_SIZE records): short, so that a burst of large records never waits
# long in the intake (it costs a wake-up 50 times a second).
ROUTER_POLL_SECONDS = 0.02
# A sink's worker routes for itself when it runs out of work; the router routes only after
# nobody did for this long (the workers are busy or stuck), or when the intake is half full.
ROUTER_GRACE_SECONDS = 0.1
# A caller whose records are dropped at the full intake lets go of the GIL once every this
# many drops (time.sleep(0)). CPython hands the GIL to a waiting thread only every
# sys.getswitchinterval() (5 ms) otherwise, so a caller in a tight loop held it while the
# router and the sink's worker, back from each round trip to the database, waited for it:
# the busy-caller benchmark delivered 0.4x the idle rate. The yield costs a few ns per drop
# and hands the GIL over only to threads that want it (with none waiting it is a syscall).
YIELD_EVERY_DROPS = 256
DROP_WARNING_SECONDS = 10.0  # at most one drop warning per sink (and the intake) per interval
MIN_INTAKE = 2


class Dispatcher:
    """One per process: the intake, the router and one pipeline per sink.

    ``submit`` never blocks in the default ``overflow="drop"``: a full intake rejects the
    newest record and counts it. Thread-safe.
    """

    def __init__(self) -> None:
        # The intake. Never replaced: generated wrappers keep a reference to it.
        self.queue: deque[RawRecord] = deque()
        self._capture: Callable[[RawRecord], None] | None = None
        self._init_runtime()
        self._run = Run((), Limits(), fast_lane=True)
        self._update_lanes()
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._intake_ready = threading.Event()
        # Routing is done by one thread at a time, whichever gets there first: a sink's worker
        # that ran out of work routes the next slice itself (no hand-off between threads);
        # the router thread steps in when every worker is busy or stuck.
        self._routing = threading.Lock()
        self._routed_at = 0.0  # when a slice was last routed (monotonic)
        # The fast lane (see _emit.emit and _lane): a wrapper may append straight to the
        # intake while its length is under `lane_limit` (audits) or `events_lane_limit`
        # (analytics): the intake's bound while the lane is open, 0 while it is closed.
        self.lane_limit = 0
        self.events_lane_limit = 0
        self._intake_limit = DEFAULT_QUEUE_SIZE
        self._raw_bytes = 0  # a raw record's size, as the router last estimated it

    # -- configuration --------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle state (WAITING, RUNNING or STOPPING)."""
        return self._run.state

    @property
    def sinks(self) -> list[Sink]:
        """The sinks of the current configuration (empty while WAITING)."""
        run = self._run
        return [p.sink for p in run.pipelines] if run.state is not State.WAITING else []

    @property
    def mirrored(self) -> bool:
        """Whether stored records go on to other sinks (OTel logs), which need the record."""
        run = self._run
        return run.state is State.RUNNING and bool(run.mirrors)

    @property
    def capture(self) -> Callable[[RawRecord], None] | None:
        """The test capture that receives records instead of the intake (testing.capture())."""
        return self._capture

    @capture.setter
    def capture(self, receiver: Callable[[RawRecord], None] | None) -> None:
        self._capture = receiver
        self._update_lanes()

    def _update_lanes(self) -> None:
        run = self._run
        open_ = (
            run.state is State.RUNNING and run.started and run.fast_lane and self._capture is None
        )
        self.lane_limit = self._intake_limit if open_ else 0
        self.events_lane_limit = self.lane_limit if EVENT in run.routes else 0
        # Where a fast lane may drop a record without making it (count_drop()): at the
        # intake's bound while the lane is open in overflow="drop"; never otherwise (a closed
        # lane, or "block", takes emit() and submit()).
        dropping = open_ and run.limits.overflow == "drop"
        self.drop_at = self.lane_limit if dropping else sys.maxsize
        self.events_drop_at = (
            self.events_lane_limit if dropping and EVENT in run.routes else sys.maxsize
        )

    def install(
        self, sinks: Sequence[Sink], limits: Limits | None = None, *, fast_lane: bool = True
    ) -> None:
        """Start delivering to *sinks* (configure()); records waiting in the intake too.

        *fast_lane* False makes every record take ``emit()`` (a scope provider must fill
        its fields). Counters start from zero.
        """
        limits = limits or Limits()
        previous = self._run
        if previous.state is not State.WAITING:
            self.shutdown(5.0)
        self._report_drops(previous, force=True)  # what no configuration delivered
        run = Run(sinks, limits, fast_lane)
        with self._lock:
            self._run = run
            self._intake_limit = limits.queue_size
            self._raw_bytes = 0
        if sinks:
            self._start(run)
        self._update_lanes()

    def _start(self, run: Run) -> None:
        with self._lock:
            if run.started or run.state is not State.RUNNING or run is not self._run:
                return
            run.started = True
            threads = []
            for p in run.pipelines:
                p.thread = threading.Thread(
                    target=self._work, args=(run, p), name=f"obs-sdk-sink-{p.name}", daemon=True
                )
                threads.append(p.thread)
            run.router = threading.Thread(
                target=self._route_loop, args=(run,), name="obs-sdk-dispatch", daemon=True
            )
            threads.append(run.router)
        for thread in threads:
            thread.start()
        self._update_lanes()

    # -- hot path ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the router now (the intake holds a batch)."""
        self._intake_ready.set()

    def submit(self, raw: RawRecord) -> bool:
        """Queue *raw* for delivery; False (and counted) when it was dropped."""
        capture = self._capture
        if capture is not None:
            capture(raw)
            return True
        if raw[0] is STORED:
            self._announce(raw[1])
            return True
        run = self._run
        queue = self.queue
        if len(queue) >= self._intake_limit:
            if not self._intake_ready.is_set():
                self._intake_ready.set()  # the router may be asleep: it makes room
            if run.limits.overflow == "drop" or run.state is not State.RUNNING:
                if not next(run.intake_drops) % YIELD_EVERY_DROPS:
                    time.sleep(0)  # see YIELD_EVERY_DROPS
                return False
            if not self._wait_for_intake(run):
                next(run.intake_drops)
                return False
        queue.append(raw)
        if len(queue) == BATCH_SIZE:
            self._intake_ready.set()
        if not run.started and run.state is State.RUNNING:
            self._start(run)  # the first record after a fork
        return True

    def count_drop(self) -> None:
        """Count one record a fast lane dropped at the full intake without making it.

        For the hot path (``len(queue) >= drop_at``): one ``next()`` on a count, lock-free
        and exact, cheaper than making the record; every YIELD_EVERY_DROPS drops the caller
        lets the threads that deliver have the GIL.
        """
        if not next(self._run.intake_drops) % YIELD_EVERY_DROPS:
            time.sleep(0)  # see YIELD_EVERY_DROPS
        if not self._intake_ready.is_set():
            self._intake_ready.set()

    def _wait_for_intake(self, run: Run) -> bool:
        """overflow="block": wait up to block_timeout for room in the intake."""
        deadline = time.monotonic() + run.limits.block_timeout
        self._intake_ready.set()
        with self._cond:
            run.waiting_for_room += 1
            try:
                while len(self.queue) >= self._intake_limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or run.state is not State.RUNNING:
                        return False
                    self._cond.wait(remaining)
            finally:
                run.waiting_for_room -= 1
        return True

    def _announce(self, record: Any) -> None:
        """A record its transaction stored: delivered; the mirrors (OTel logs) get a copy."""
        run = self._run
        mirrors = run.mirrors if run.state is State.RUNNING else []
        size = approx_bytes(record) if mirrors else 0
        with self._lock:
            run.stored += 1
            for p in mirrors:
                p.stats.submitted += 1
                reason = self._no_room(run, p, size)
                if reason:
                    p.stats.dropped += 1
                    p.drop_reason = reason
                    continue
                p.queue.append((record, size, False))
                p.bytes += size
        for p in mirrors:
            p.wake.set()

    # -- routing ------------------------------------------------------------------------------

    def _route_loop(self, run: Run) -> None:
        """The router thread: route when the sinks' workers do not.

        A worker that runs out of work routes the next slice itself, so a healthy sink
        renders and writes on one thread, with no hand-off (two threads passing records
        back and forth wait for each other's GIL). The router steps in when nobody routed
        for ROUTER_GRACE_SECONDS (every worker busy, or stuck in its sink) or the intake
        is half full, and otherwise only wakes an idle worker. It looks at the newest
        record every time, so that large records shrink the intake's bound at once.
        """
        reported = time.monotonic()
        intake = self.queue
        with suppressed():  # a sink's own DB writes and HTTP calls are never recorded
            while run.state is State.RUNNING:
                self._intake_ready.wait(ROUTER_POLL_SECONDS)
                self._intake_ready.clear()
                try:
                    self._learn_from_newest(run)
                    while run.state is State.RUNNING and intake:
                        idle = time.monotonic() - self._routed_at
                        if idle < ROUTER_GRACE_SECONDS and len(intake) < self._intake_limit // 2:
                            for p in run.pipelines:
                                p.wake.set()  # an idle worker routes it
                            break
                        if not self._route(run):
                            break
                        if time.monotonic() - reported >= INTERVAL_SECONDS:
                            reported = time.monotonic()
                            self.report_drops()  # the intake may never run dry
                    if time.monotonic() - reported >= INTERVAL_SECONDS / 4:
                        reported = time.monotonic()
                        self.report_drops()
                except Exception as exc:  # pragma: no cover - a bug: never lose the router
                    count_error("dispatch", exc)

    def _learn_from_newest(self, run: Run) -> None:
        """Estimate the newest record in the intake: a large one lowers its bound now."""
        try:
            newest = self.queue[-1]
        except IndexError:
            return
        if newest[0] is STORED or newest[SPEC].kind not in run.routes:
            return
        estimate = raw_size(newest, run.limits.max_queue_bytes)
        if estimate > 2 * self._raw_bytes:
            self._learn_raw_size(estimate)

    def _route(self, run: Run) -> bool:
        """Route one slice unless another thread is routing; False when nothing was routed."""
        if not self._routing.acquire(blocking=False):
            return False
        try:
            return self._route_slice(run)
        finally:
            self._routed_at = time.monotonic()
            self._routing.release()

    def _route_slice(self, run: Run) -> bool:
        """Route up to ROUTE_SLICE records; False when nothing was (intake empty, no room).

        While every sink's queue is full, nothing is routed: records wait in the intake, and
        when it is full too the newest are dropped there, at no cost to the sinks' workers.
        When some queue has room, each record's raw size is estimated first (lengths,
        within a budget): one its queues have no room for is dropped without being
        rendered, so a dead sink costs the others next to nothing.
        """
        intake = self.queue
        limits = run.limits
        with self._lock:
            if run is not self._run:
                return False
            n = min(len(intake), ROUTE_SLICE)
            if not n or not any(
                len(p.queue) < limits.queue_size and p.bytes < limits.queue_bytes
                for p in run.pipelines
            ):
                return False
            raws = deque([intake.popleft() for _ in range(n)])
            run.routed += n
            run.routing = n
            # What each queue can take: it only grows while the router works (the workers
            # take items out; stored records' announcements are the one exception).
            room = {
                p: [limits.queue_bytes - p.bytes, limits.queue_size - len(p.queue)]
                for p in run.pipelines
            }
            if run.waiting_for_room:
                self._cond.notify_all()
        routes = run.routes
        out: dict[Pipeline, list[tuple[Any, int, bool]]] = {p: [] for p in run.pipelines}
        refused: dict[Pipeline, list[bool]] = {p: [] for p in run.pipelines}
        failed: list[Pipeline] = []
        unrouted = 0
        budget = limits.max_queue_bytes
        largest = rendered_bound()
        block_until = time.monotonic() + limits.block_timeout
        total = 0
        while raws:
            raw = raws.popleft()  # released as it goes: a slice of large records is not held
            route = routes.get(raw[SPEC].kind)
            if route is None:
                unrouted += 1
                continue
            estimate = raw_size(raw, budget)
            total += estimate
            if estimate > 2 * self._raw_bytes:
                self._learn_raw_size(estimate)  # at once: the intake must stop taking them
            need = min(estimate, largest)
            primary = route.primary
            takers = []
            for p in route.pipelines:
                if self._has_room(run, p, room[p], need, block_until):
                    takers.append(p)
                else:
                    refused[p].append(p is primary)
            if not takers:
                continue
            try:
                item = route.render(raw)
                size = approx_bytes(item)
            except Exception as exc:
                count_error("render", exc)
                failed.append(primary)
                continue
            for p in takers:
                free = room[p]
                if self._has_room(run, p, free, size, block_until):
                    free[0] -= size
                    free[1] -= 1
                    out[p].append((item, size, p is primary))
                else:
                    refused[p].append(p is primary)
        self._learn_raw_size(total // n, decay=True)
        self._admit(run, out, refused, failed, unrouted)
        return True

    def _has_room(self, run: Run, p: Pipeline, free: list[int], size: int, until: float) -> bool:
        """Whether *p* can take *size* more bytes (*free*: its room left in this slice).

        With overflow="block", waits until *until* for the worker to make room.
        """
        if free[0] >= size and free[1] > 0:
            return True
        if run.limits.overflow != "block" or time.monotonic() >= until:
            return False
        limits = run.limits
        with self._cond:
            pending = (
                limits.queue_bytes - p.bytes - free[0],
                limits.queue_size - len(p.queue) - free[1],
            )
            p.wake.set()
            run.waiting_for_room += 1
            try:
                while True:
                    # Room now, minus what this slice already promised to other records.
                    free[0] = limits.queue_bytes - p.bytes - pending[0]
                    free[1] = limits.queue_size - len(p.queue) - pending[1]
                    remaining = until - time.monotonic()
                    if (free[0] >= size and free[1] > 0) or remaining <= 0:
                        break
                    if run.state is not State.RUNNING:
                        break
                    self._cond.wait(remaining)
            finally:
                run.waiting_for_room -= 1
        return free[0] >= size and free[1] > 0

    def _learn_raw_size(self, estimate: int, *, decay: bool = False) -> None:
        """Bound the intake in bytes too: fewer records when raw records are large.

        The intake holds records as callers made them (metadata as given, before any cut),
        so its bound in records shrinks until it holds about max_queue_bytes / INTAKE_SHARE;
        it grows back as records get smaller again.
        """
        if decay:
            estimate = max(estimate, int(0.9 * self._raw_bytes))
        self._raw_bytes = estimate
        limits = self._run.limits
        share = limits.intake_bytes
        limit = limits.queue_size
        if estimate * limit > share:
            limit = max(MIN_INTAKE, share // max(estimate, 1))
        if limit != self._intake_limit:
            self._intake_limit = limit
            self._update_lanes()

    def _no_room(self, run: Run, p: Pipeline, size: int) -> str:
        """Why *p* cannot take an item of *size* bytes now ("" when it can)."""
        limits = run.limits
        if len(p.queue) >= limits.queue_size:
            return (
                f"queue full: the {p.label} sink is slower than callers "
                f"(queue_size={limits.queue_size})"
            )
        if p.bytes + size > limits.queue_bytes:
            return (
                f"queue over max_queue_bytes={limits.max_queue_bytes}: the {p.label} sink is "
                "slower than callers"
            )
        return ""

    def _admit(
        self,
        run: Run,
        out: dict[Pipeline, list[tuple[Any, int, bool]]],
        refused: dict[Pipeline, list[bool]],
        failed: list[Pipeline],
        unrouted: int,
    ) -> None:
        """Put the slice's items in their sinks' queues; count what found no room."""
        with self._cond:
            for p in failed:
                p.stats.submitted += 1
                p.stats.failed += 1
                run.failed += 1
            run.unrouted += unrouted
            run.dropped += unrouted
            for p in run.pipelines:
                items, dropped = out[p], refused[p]
                p.stats.submitted += len(items) + len(dropped)
                if items:
                    end = self._enqueue(run, p, items)
                    if end < len(items):  # stored records' copies took the room meanwhile
                        dropped = [*dropped, *(item[2] for item in items[end:])]
                    p.wake.set()
                if dropped:
                    p.stats.dropped += len(dropped)
                    run.dropped += sum(dropped)
                    p.drop_reason = self._no_room(run, p, rendered_bound()) or (
                        f"queue full: the {p.label} sink is slower than callers"
                    )
            run.routing = 0
            self._cond.notify_all()  # flushes wait for routing to end

    def _enqueue(self, run: Run, p: Pipeline, items: list[tuple[Any, int, bool]]) -> int:
        """Append *items* while *p* has room; return how many it took."""
        limits = run.limits
        free_bytes = limits.queue_bytes - p.bytes
        stop = min(len(items), max(limits.queue_size - len(p.queue), 0))
        end = size = primary = 0
        while end < stop:
            item = items[end]
            if size + item[1] > free_bytes:
                break
            size += item[1]
            primary += item[2]
            end += 1
        if end:
            p.queue.extend(items[:end] if end < len(items) else items)
            p.bytes += size
            p.primary += primary
        return end

    def _drop_items(
        self, run: Run, p: Pipeline, items: Sequence[tuple[Any, int, bool]], reason: str
    ) -> None:
        """Count *items* (not in *p*'s queue) as dropped by *p*, for *reason*."""
        primary = sum(item[2] for item in items)
        p.stats.dropped += len(items)
        run.dropped += primary
        p.drop_reason = reason

    # -- the sinks' workers -------------------------------------------------------------------

    def _work(self, run: Run, p: Pipeline) -> None:
        with suppressed():
            while True:
                batch = self._take(run, p)
                if batch is None:
                    return
                try:
                    outcomes = export(run, p, [item[0] for item in batch], self._lock)
                except Exception as exc:  # pragma: no cover - _export guards itself
                    count_error("dispatch", exc)
                    outcomes = [FAILED] * len(batch)
                self._settle(run, p, batch, outcomes)

    def _take(self, run: Run, p: Pipeline) -> list[tuple[Any, int, bool]] | None:
        """Wait for a batch of *p*'s queue; None when the worker should end."""
        lingered = False
        while True:
            if len(p.queue) < BATCH_SIZE and self.queue and run.state is State.RUNNING:
                self._route(run)  # route the next slice here rather than wait for the router
            with self._lock:
                n = len(p.queue)
                stopping = run.state is not State.RUNNING
                if stopping and (not n or time.monotonic() >= run.deadline):
                    return None
                if n and (n >= BATCH_SIZE or lingered or run.flushing or stopping):
                    batch = take_batch(p.queue, run.limits.batch_bytes)
                    p.in_flight = batch
                    if run.waiting_for_room:
                        self._cond.notify_all()
                    return batch
            p.wake.wait(LINGER_SECONDS if n else INTERVAL_SECONDS)
            p.wake.clear()
            lingered = n > 0

    def _settle(
        self, run: Run, p: Pipeline, batch: list[tuple[Any, int, bool]], outcomes: list[str]
    ) -> None:
        stats = p.stats
        size = sum(item[1] for item in batch)
        primary = sum(item[2] for item in batch)
        with self._lock:
            p.bytes -= size
            p.primary -= primary
            if outcomes.count(DELIVERED) == len(outcomes):
                stats.delivered += len(batch)
                run.delivered += primary
            else:
                for (_, _, is_primary), outcome in zip(batch, outcomes, strict=True):
                    if outcome is DELIVERED:
                        stats.delivered += 1
                        run.delivered += is_primary
                    elif outcome is DROPPED:
                        stats.dropped += 1
                        run.dropped += is_primary
                    else:
                        stats.failed += 1
                        run.failed += is_primary
            p.in_flight = []
            self._cond.notify_all()

    # -- flush, shutdown ------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was exported and every sink flushed, or *timeout*.

        False when a record is still queued or a sink's destination still holds some (a
        PostHog client's own queue).
        """
        deadline = time.monotonic() + timeout
        run = self._run
        if run.state is not State.RUNNING:
            return not self.queue
        if not run.started:
            self._start(run)
        drained = self._wait_idle(run, deadline)
        self.report_drops()
        for p in run.pipelines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with suppressed():
                try:
                    if p.sink.flush(remaining) is False:
                        drained = False
                except Exception as exc:
                    count_error(f"flush:{p.name}", exc)
                    drained = False
        return drained

    def _idle(self, run: Run) -> bool:
        return not (self.queue or run.routing or any(p.queued() for p in run.pipelines))

    def _wait_idle(self, run: Run, deadline: float) -> bool:
        with self._cond:
            run.flushing += 1  # no lingering for fuller batches while someone waits
        try:
            while True:
                self._intake_ready.set()
                for p in run.pipelines:
                    p.wake.set()
                with self._cond:
                    if self._idle(run):
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or run.state is not State.RUNNING:
                        return False
                    self._cond.wait(min(remaining, 0.05))
        finally:
            with self._cond:
                run.flushing -= 1

    def shutdown(self, timeout: float) -> bool:
        """Flush within *timeout*, stop the threads and the sinks; records wait again after."""
        deadline = time.monotonic() + timeout
        run = self._run
        if run.state is not State.RUNNING:
            return not self.queue
        done = self.flush(timeout)
        with self._cond:
            run.state = State.STOPPING
            run.deadline = deadline
            self._cond.notify_all()
        self._update_lanes()  # records take submit() and wait in the intake
        self._intake_ready.set()
        for p in run.pipelines:
            p.wake.set()
        for thread in [run.router, *(p.thread for p in run.pipelines)]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                done = done and not thread.is_alive()
        with self._cond:
            for p in run.pipelines:
                left = list(p.queue)
                p.queue.clear()
                if left:
                    p.bytes -= sum(item[1] for item in left)
                    p.primary -= sum(item[2] for item in left)
                    self._drop_items(
                        run, p, left, f"shutdown: the {p.label} sink did not take them in time"
                    )
                    done = False
            run.state = State.WAITING
        self.report_drops()
        for p in run.pipelines:
            with suppressed():
                try:
                    p.sink.shutdown(max(0.0, deadline - time.monotonic()))
                except Exception as exc:
                    count_error(f"shutdown:{p.name}", exc)
        self._update_lanes()
        return done

    # -- fork ----------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        # Never held across I/O: a fork waits at most for a counter update, never for a sink.
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        # The child needs fresh locks and empty queues, not a finished export: records queued
        # before the fork are the parent's to deliver (copies here would be written twice),
        # and no thread survived the fork. Threads start with the child's first record.
        old = self._run
        self.queue.clear()
        self._init_runtime()
        self._run = Run([p.sink for p in old.pipelines], old.limits, old.fast_lane)
        if old.state is not State.RUNNING:
            self._run.state = State.WAITING
        self._intake_limit = old.limits.queue_size
        for p in self._run.pipelines:
            try:
                p.sink.after_fork()
            except Exception as exc:
                count_error(f"fork:{p.name}", exc)
        self._update_lanes()

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since configure(); submitted == queued + delivered + dropped + failed.

        ``submitted`` counts what entered: records in the intake, taken out of it, dropped
        at it, and records their transaction stored. The other four count where records
        are now, so the invariant is a check, not a sum.
        """
        run = self._run
        with self._lock:
            intake = len(self.queue)
            intake_dropped = run.intake_dropped()
            primary_queued = sum(p.primary for p in run.pipelines)
            result: dict[str, Any] = {
                "submitted": intake + run.routed + intake_dropped + run.stored,
                "queued": intake + run.routing + primary_queued,
                "delivered": run.delivered + run.stored,
                "dropped": run.dropped + intake_dropped,
                "failed": run.failed,
                "retried": sum(p.stats.retried for p in run.pipelines),
                "by_sink": {p.name: sink_stats(p) for p in run.pipelines},
            }
        result["internal_errors"] = internal_errors()
        result.update(counters())
        return result

    def count_upload_failure(self, sink_name: str, n: int) -> None:
        """Count records a sink's own uploader lost after they were handed over."""
        with self._lock:
            for p in self._run.pipelines:
                if p.name == sink_name:
                    p.stats.upload_failed += n

    def report_drops(self) -> None:
        """Log what was dropped since the last report (rate-limited: see _report_drops)."""
        self._report_drops(self._run)

    def _report_drops(self, run: Run, *, force: bool = False) -> None:
        """Say what was dropped, with the count and the reason.

        The first drop at once, then at most one WARNING per sink (and one for the intake)
        every DROP_WARNING_SECONDS; *force* says what is left unsaid now.
        """
        now = time.monotonic()
        due: list[tuple[int, str, str]] = []
        limits = run.limits
        with self._lock:
            full = [
                p.label
                for p in run.pipelines
                if len(p.queue) >= limits.queue_size or p.bytes >= limits.queue_bytes
            ]
        if run.state is not State.RUNNING:
            intake = (
                f"queue full (queue_size={limits.queue_size}) while no configuration "
                "delivered it (before configure(), or after shutdown())"
            )
        elif full:  # nothing is routed to a full queue: records wait, then drop, here
            intake = (
                f"queue full: the {' and '.join(full)} sink is slower than callers "
                f"(queue_size={limits.queue_size}, max_queue_bytes={limits.max_queue_bytes})"
            )
        else:
            intake = (
                "queue full: records arrive faster than obs_sdk renders them "
                f"(queue_size={limits.queue_size})"
            )
        with self._lock:
            places = [
                (p.name, f"the {p.label} sink", p.stats.dropped, p.drop_reason)
                for p in run.pipelines
            ]
            places.append(("intake", "the intake", run.intake_dropped(), intake))
            places.append(
                ("unrouted", "the intake", run.unrouted, "no configured sink takes their kind")
            )
            for key, where, total, reason in places:
                log = run.drop_logs.setdefault(key, DropLog())
                if total <= log.reported:
                    continue
                recent = log.warned_at is not None and now - log.warned_at < DROP_WARNING_SECONDS
                if recent and not force:
                    continue
                due.append((total - log.reported, where, reason))
                log.reported = total
                log.warned_at = now
        for n, where, reason in due:
            logger.warning(
                "obs_sdk dropped %d record(s) at %s: %s. obs.stats() counts them; at most "
                "one such warning is logged per sink every %.0f s.",
                n,
                where,
                reason,
                DROP_WARNING_SECONDS,
            )


dispatcher = Dispatcher()
