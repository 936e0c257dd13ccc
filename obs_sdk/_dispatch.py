"""Delivery: one intake for the hot path, then one bounded pipeline per sink.

::

    callers --append--> intake --router: render, measure, admit--> queue per sink --> export

The hot path appends raw record tuples to the intake, a deque (atomic under the GIL, no lock).
The router thread ("obs-sdk-dispatch") takes them in slices and renders each record once (a
sink that alone takes a kind may render it its own way: the SQL sink straight into its
driver's row), measures it, and admits it to the queue of every sink that takes its kind,
within that sink's bounds: ``queue_size`` records and ``max_queue_bytes`` bytes. The router
never waits on a sink, so a sink that hangs delays no other: its queue fills, and records
meant for it are dropped, counted and reported. Each sink has its own worker thread
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

import enum
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from obs_sdk._context import suppressed
from obs_sdk._guard import count_error, counters, internal_errors
from obs_sdk._records import (
    AUDIT,
    EVENT,
    GROUP,
    SPEC,
    STORED,
    STORED_AUDIT,
    RawRecord,
    approx_bytes,
    raw_size,
    render,
    rendered_bound,
)
from obs_sdk._sinks import Sink

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "Dispatcher",
    "Limits",
    "State",
    "dispatcher",
]

logger = logging.getLogger("obs_sdk")

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_BLOCK_TIMEOUT = 0.05
OVERFLOW_MODES = ("drop", "block")
BATCH_SIZE = 500  # records per export (one transaction on the SQL sink)
ROUTE_SLICE = 1024  # records the router renders between two admissions
INTERVAL_SECONDS = 0.2  # how long a sink's worker sleeps with nothing to do
# How long the router sleeps between looks at the intake, when the hot path has not woken it
# (it does at every BATCH_SIZE records): short, so that a burst of large records never waits
# long in the intake (it costs a wake-up 50 times a second).
ROUTER_POLL_SECONDS = 0.02
# While records keep coming, a part-full batch waits this long for more: each batch is one
# transaction (a commit), so batches of 500 cost far less per record than of 20.
LINGER_SECONDS = 0.01
RETRY_SECONDS = 30.0  # how long a transient outage is waited out per batch
MAX_BACKOFF_SECONDS = 2.0
RETRY_WARNING_SECONDS = 1.0  # a batch retried this long is logged (once)
DROP_WARNING_SECONDS = 10.0  # at most one drop warning per sink (and the intake) per interval
# The intake holds raw records (template values, metadata as the caller gave it) until the
# router renders them: once records are seen to be large, its bound in records shrinks so
# that it holds about this share of max_queue_bytes.
INTAKE_SHARE = 16
BATCH_SHARE = 16  # a batch in export holds at most this share of max_queue_bytes
MIN_INTAKE = 2

# What happened to one exported record.
DELIVERED, DROPPED, FAILED = "delivered", "dropped", "failed"
_KINDS = (AUDIT, EVENT, GROUP)


class State(enum.Enum):
    """Where the dispatcher is in its lifecycle (see the module docstring)."""

    WAITING = "waiting"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one configuration's queues, from ``configure()``.

    ``max_queue_bytes`` bounds what one sink's delivery holds: the intake's share of it
    (records as callers made them, 1/INTAKE_SHARE), the driver's copy of the batch in export
    (1/BATCH_SHARE), room for rendering's temporaries (1/BATCH_SHARE), and the sink's queue,
    its batch in export included (the rest, ``queue_bytes``).
    """

    queue_size: int = DEFAULT_QUEUE_SIZE
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    overflow: str = "drop"
    block_timeout: float = DEFAULT_BLOCK_TIMEOUT

    @property
    def intake_bytes(self) -> int:
        """The intake's share of max_queue_bytes."""
        return self.max_queue_bytes // INTAKE_SHARE

    @property
    def batch_bytes(self) -> int:
        """The most one batch in export holds (its driver copies it once more)."""
        return self.max_queue_bytes // BATCH_SHARE

    @property
    def queue_bytes(self) -> int:
        """What one sink's queue may hold, its batch in export included."""
        return self.max_queue_bytes - self.intake_bytes - 2 * self.batch_bytes


class DeliveryError(Exception):
    """A sink could not deliver records: what is logged instead of the sink's own error.

    Says which records (ids and actions) and the error's class and SQLSTATE, never the
    error's text: a database's message quotes the statement's parameters, emails included.
    """


class _SinkStats:
    __slots__ = ("delivered", "dropped", "failed", "retried", "submitted", "upload_failed")

    def __init__(self) -> None:
        self.submitted = 0
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.retried = 0
        self.upload_failed = 0


class _Pipeline:
    """One sink's bounded queue, its worker and its counters."""

    __slots__ = (
        "bytes",
        "drop_reason",
        "in_flight",
        "label",
        "name",
        "primary",
        "queue",
        "sink",
        "stats",
        "thread",
        "wake",
    )

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = sink.name
        engine = getattr(sink, "engine", None)
        dialect = getattr(getattr(engine, "dialect", None), "name", None)
        self.label = f"{sink.name} ({dialect})" if dialect else sink.name
        # Items are (record, approximate bytes, primary): primary when this sink decides the
        # record's top-level outcome.
        self.queue: deque[tuple[Any, int, bool]] = deque()
        self.bytes = 0  # of the queued and in-flight items
        self.primary = 0  # how many of them are primary
        self.in_flight: list[tuple[Any, int, bool]] = []
        self.stats = _SinkStats()
        self.drop_reason = ""
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()

    def queued(self) -> int:
        return len(self.queue) + len(self.in_flight)


class _Route:
    """Where records of one kind go, and how the router renders them."""

    __slots__ = ("pipelines", "primary", "render")

    def __init__(self, pipelines: list[_Pipeline], render: Callable[[RawRecord], Any]) -> None:
        self.pipelines = pipelines
        self.primary = pipelines[0]
        self.render = render


def _routes(pipelines: list[_Pipeline]) -> dict[str, _Route]:
    routes: dict[str, _Route] = {}
    for kind in _KINDS:
        taking = [p for p in pipelines if kind in p.sink.kinds]
        if not taking:
            continue
        # A sink alone in taking audits may render them itself (the SQL sink: straight into
        # its driver's row). With another audit sink, every sink gets the same AuditRecord,
        # so that they agree on its id.
        alone = getattr(taking[0].sink, "render_alone", None) if len(taking) == 1 else None
        routes[kind] = _Route(taking, alone if kind == AUDIT and alone is not None else render)
    return routes


class _DropLog:
    """What was last said about one place's drops (rate-limited warnings)."""

    __slots__ = ("reported", "warned_at")

    def __init__(self) -> None:
        self.reported = 0
        self.warned_at: float | None = None


class _Run:
    """One configuration's delivery: its limits, pipelines, routes, threads and counters."""

    def __init__(self, sinks: Sequence[Sink], limits: Limits, fast_lane: bool) -> None:
        self.limits = limits
        self.fast_lane = fast_lane
        self.pipelines = [_Pipeline(sink) for sink in sinks]
        self.routes = _routes(self.pipelines)
        self.mirrors = [p for p in self.pipelines if STORED_AUDIT in p.sink.kinds]
        self.state = State.RUNNING if sinks else State.WAITING
        self.started = False
        self.router: threading.Thread | None = None
        self.deadline = float("inf")  # a shutdown's: backoff and delivery stop there
        self.flushing = 0  # flushes waiting: no lingering for fuller batches meanwhile
        self.waiting_for_room = 0  # callers and the router waiting in overflow="block"
        # Top-level counters (see the module docstring).
        self.routed = 0  # taken out of the intake by the router
        self.routing = 0  # taken out, not yet admitted anywhere
        self.stored = 0  # stored by their own transaction: submitted and delivered at once
        self.delivered = 0
        self.dropped = 0  # by the primary sink's queue, or refused by its destination
        self.failed = 0
        self.intake_drops = itertools.count()  # next() is atomic: callers count lock-free
        self.unrouted = 0  # records of a kind no sink takes
        self.drop_logs: dict[str, _DropLog] = {}

    def intake_dropped(self) -> int:
        # The count's value without advancing it ("count(5)"): exact, lock-free on the
        # caller's side (the drop path costs a next() and nothing else).
        return int(repr(self.intake_drops)[6:-1])


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
        self._run = _Run((), Limits(), fast_lane=True)
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
        # The fast lane (see _emit.emit and _lane): a wrapper may append straight to the
        # intake while its length is under `lane_limit` (audits) or `events_lane_limit`
        # (analytics): the intake's bound while the lane is open, 0 while it is closed.
        self.lane_limit = 0
        self.events_lane_limit = 0
        self._intake_limit = DEFAULT_QUEUE_SIZE
        self._raw_bytes = 0  # a raw record's size, as the router last estimated it
        self._raw_bytes_limit = DEFAULT_MAX_QUEUE_BYTES  # above it, the intake bound shrinks

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
        run = _Run(sinks, limits, fast_lane)
        with self._lock:
            self._run = run
            self._intake_limit = limits.queue_size
            self._raw_bytes = 0
            self._raw_bytes_limit = limits.intake_bytes // limits.queue_size
        if sinks:
            self._start(run)
        self._update_lanes()

    def _start(self, run: _Run) -> None:
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
                next(run.intake_drops)
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
        """Count one record dropped by a caller's full intake without being made."""
        next(self._run.intake_drops)
        if not self._intake_ready.is_set():
            self._intake_ready.set()

    def _wait_for_intake(self, run: _Run) -> bool:
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

    def _route_loop(self, run: _Run) -> None:
        reported = time.monotonic()
        with suppressed():  # a sink's own DB writes and HTTP calls are never recorded
            while run.state is State.RUNNING:
                self._intake_ready.wait(ROUTER_POLL_SECONDS)
                self._intake_ready.clear()
                try:
                    while run.state is State.RUNNING and self._route_slice(run):
                        if time.monotonic() - reported >= INTERVAL_SECONDS:
                            reported = time.monotonic()
                            self.report_drops()  # the intake may never run dry
                    reported = time.monotonic()
                    self.report_drops()
                except Exception as exc:  # pragma: no cover - a bug: never lose the router
                    count_error("dispatch", exc)

    def _route_slice(self, run: _Run) -> bool:
        """Route up to ROUTE_SLICE records; False when the intake was empty.

        Each record's raw size is estimated first (lengths, within a budget): a record no
        queue has room for is dropped without being rendered, so a dead sink costs the
        router next to nothing and the intake never backs up behind it.
        """
        intake = self.queue
        limits = run.limits
        with self._lock:
            if run is not self._run:
                return False
            n = min(len(intake), ROUTE_SLICE)
            if not n:
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
        out: dict[_Pipeline, list[tuple[Any, int, bool]]] = {p: [] for p in run.pipelines}
        refused: dict[_Pipeline, list[bool]] = {p: [] for p in run.pipelines}
        failed: list[_Pipeline] = []
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
            if estimate > self._raw_bytes_limit:
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

    def _has_room(self, run: _Run, p: _Pipeline, free: list[int], size: int, until: float) -> bool:
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
        self._raw_bytes_limit = share // limit
        if limit != self._intake_limit:
            self._intake_limit = limit
            self._update_lanes()

    def _no_room(self, run: _Run, p: _Pipeline, size: int) -> str:
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
        run: _Run,
        out: dict[_Pipeline, list[tuple[Any, int, bool]]],
        refused: dict[_Pipeline, list[bool]],
        failed: list[_Pipeline],
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

    def _enqueue(self, run: _Run, p: _Pipeline, items: list[tuple[Any, int, bool]]) -> int:
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
        self, run: _Run, p: _Pipeline, items: Sequence[tuple[Any, int, bool]], reason: str
    ) -> None:
        """Count *items* (not in *p*'s queue) as dropped by *p*, for *reason*."""
        primary = sum(item[2] for item in items)
        p.stats.dropped += len(items)
        run.dropped += primary
        p.drop_reason = reason

    # -- the sinks' workers -------------------------------------------------------------------

    def _work(self, run: _Run, p: _Pipeline) -> None:
        with suppressed():
            while True:
                batch = self._take(run, p)
                if batch is None:
                    return
                try:
                    outcomes = self._export(run, p, [item[0] for item in batch])
                except Exception as exc:  # pragma: no cover - _export guards itself
                    count_error("dispatch", exc)
                    outcomes = [FAILED] * len(batch)
                self._settle(run, p, batch, outcomes)

    def _take(self, run: _Run, p: _Pipeline) -> list[tuple[Any, int, bool]] | None:
        """Wait for a batch of *p*'s queue; None when the worker should end."""
        lingered = False
        while True:
            with self._lock:
                n = len(p.queue)
                stopping = run.state is not State.RUNNING
                if stopping and (not n or time.monotonic() >= run.deadline):
                    return None
                if n and (n >= BATCH_SIZE or lingered or run.flushing or stopping):
                    batch = _take_batch(p.queue, run.limits.batch_bytes)
                    p.in_flight = batch
                    if run.waiting_for_room:
                        self._cond.notify_all()
                    return batch
            p.wake.wait(LINGER_SECONDS if n else INTERVAL_SECONDS)
            p.wake.clear()
            lingered = n > 0

    def _settle(
        self, run: _Run, p: _Pipeline, batch: list[tuple[Any, int, bool]], outcomes: list[str]
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

    def _export(self, run: _Run, p: _Pipeline, records: list[Any]) -> list[str]:
        """Export with retries; a batch that failed for good is retried row by row."""
        outcome, refused = self._export_retrying(run, p, records)
        if outcome == "ok":
            return _outcomes(len(records), refused)
        if outcome == "outage" or len(records) == 1:
            return [FAILED] * len(records)
        results = []
        for record in records:  # one bad record (a value the database refuses) fails alone
            outcome, refused = self._export_retrying(run, p, [record])
            results.append(FAILED if outcome != "ok" else DROPPED if refused else DELIVERED)
        return results

    def _export_retrying(
        self, run: _Run, p: _Pipeline, records: list[Any]
    ) -> tuple[str, Sequence[int]]:
        """Return ("ok", refused positions), ("outage", ()) or ("error", ())."""
        sink = p.sink
        started = time.monotonic()
        give_up_at = min(started + RETRY_SECONDS, run.deadline)
        attempt = 0
        warned = False
        while True:
            try:
                refused = sink.export(records)
            except Exception as exc:
                if not sink.is_transient(exc):
                    if len(records) == 1:
                        _log_failure(p, records, exc, "refused for good")
                    return "error", ()
                delay = min(0.05 * 2**attempt, MAX_BACKOFF_SECONDS)
                now = time.monotonic()
                if now + delay >= min(give_up_at, run.deadline):
                    _log_failure(p, records, exc, "the outage outlasted the retries")
                    return "outage", ()
                attempt += 1
                with self._lock:
                    p.stats.retried += 1
                if not warned and now - started >= RETRY_WARNING_SECONDS:
                    warned = True  # a lock held for a moment by another process is no news
                    logger.warning(
                        "obs_sdk sink %s: %s for %.1f s; still retrying %d records with backoff",
                        p.name,
                        _error_class(exc),
                        now - started,
                        len(records),
                    )
                time.sleep(delay)
                continue
            if refused:
                with self._lock:
                    p.drop_reason = (
                        f"the {p.label} sink's destination refused them (its own queue is full)"
                    )
            return "ok", refused or ()

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

    def _idle(self, run: _Run) -> bool:
        return not (self.queue or run.routing or any(p.queued() for p in run.pipelines))

    def _wait_idle(self, run: _Run, deadline: float) -> bool:
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
        self._run = _Run([p.sink for p in old.pipelines], old.limits, old.fast_lane)
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
                "by_sink": {p.name: _sink_stats(p) for p in run.pipelines},
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

    def _report_drops(self, run: _Run, *, force: bool = False) -> None:
        """Say what was dropped, with the count and the reason.

        The first drop at once, then at most one WARNING per sink (and one for the intake)
        every DROP_WARNING_SECONDS; *force* says what is left unsaid now.
        """
        now = time.monotonic()
        due: list[tuple[int, str, str]] = []
        if run.state is State.RUNNING:
            intake = (
                "queue full: records arrive faster than obs_sdk's dispatch thread renders "
                f"them (queue_size={run.limits.queue_size})"
            )
        else:
            intake = (
                f"queue full (queue_size={run.limits.queue_size}) while no configuration "
                "delivered it (before configure(), or after shutdown())"
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
                log = run.drop_logs.setdefault(key, _DropLog())
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


def _take_batch(queue: deque[tuple[Any, int, bool]], max_bytes: int) -> list[tuple[Any, int, bool]]:
    """Up to BATCH_SIZE items from the front of *queue*, and no more than *max_bytes* of them.

    A driver copies what it binds: a batch of large records is capped so that the copy stays
    a small share of max_queue_bytes.
    """
    batch = [queue.popleft()]
    size = batch[0][1]
    while queue and len(batch) < BATCH_SIZE:
        size += queue[0][1]
        if size > max_bytes:
            break
        batch.append(queue.popleft())
    return batch


def _outcomes(n: int, refused: Sequence[int]) -> list[str]:
    outcomes = [DELIVERED] * n
    for i in refused:
        outcomes[i] = DROPPED
    return outcomes


def _sink_stats(p: _Pipeline) -> dict[str, int]:
    s = p.stats
    return {
        "submitted": s.submitted,
        "queued": p.queued(),
        "delivered": s.delivered,
        "dropped": s.dropped,
        "failed": s.failed,
        "retried": s.retried,
        "upload_failed": s.upload_failed,
    }


_SHOWN = 5  # ids and actions a failure log names


def _describe(records: Sequence[Any]) -> str:
    """Ids and actions of *records*: what a log may say about them (no values, no PII)."""
    ids, actions = [], []
    for record in records:
        if isinstance(record, tuple) and not hasattr(record, "_fields"):
            ids.append(str(record[0]))  # the SQL sink's row: id, occurred_at, action, ...
            actions.append(str(record[2]))
        else:
            ids.append(str(getattr(record, "id", None) or getattr(record, "uuid", "?")))
            actions.append(str(getattr(record, "action", None) or getattr(record, "event", "?")))
    shown = ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if ids[_SHOWN:] else "")
    return f"ids {shown}; actions {', '.join(sorted(set(actions))[:_SHOWN])}"


def _error_class(exc: BaseException) -> str:
    """The error's class and, for a database error, its driver error's class and SQLSTATE."""
    text = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None:
        text += f" from {type(orig).__module__}.{type(orig).__name__}"
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        if code:
            text += f" ({code})"
    return text


def _log_failure(p: _Pipeline, records: Sequence[Any], exc: BaseException, why: str) -> None:
    count_error(
        f"sink:{p.name}",
        DeliveryError(
            f"the {p.label} sink could not deliver {len(records)} record(s) ({why}): "
            f"{_error_class(exc)}; {_describe(records)}"
        ),
    )


dispatcher = Dispatcher()
