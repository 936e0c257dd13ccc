"""The bounded queue and its one background worker: submit, flush, shutdown, stats.

The hot path appends a raw record tuple to a deque (atomic under the GIL, no lock). The
worker wakes on a timer or when a batch is full, renders records, and exports them to
every sink that takes their kind, retrying transient errors with backoff and retrying a
batch that failed for good row by row, so one bad record fails alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from obs_sdk._context import suppressed
from obs_sdk._guard import count_error, counters, internal_errors
from obs_sdk._records import AUDIT, SPEC, STORED, STORED_AUDIT, RawRecord, render
from obs_sdk._sinks import Sink

__all__ = ["DEFAULT_QUEUE_SIZE", "Dispatcher", "dispatcher"]

logger = logging.getLogger("obs_sdk")

DEFAULT_QUEUE_SIZE = 10_000
BATCH_SIZE = 500
INTERVAL_SECONDS = 0.2  # how long a record may wait in a quiet process
# While callers keep adding records, a part-full batch waits this long for more: each batch
# is one transaction (a commit), so batches of 500 cost far less per record than of 20.
LINGER_SECONDS = 0.01
MAX_BACKOFF_SECONDS = 2.0
FORK_WAIT_SECONDS = 5.0  # how long os.fork() waits for an export in progress


class _SinkStats:
    __slots__ = ("delivered", "failed", "retried", "upload_failed")

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self.upload_failed = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Dispatcher:
    """One per process. ``submit`` never blocks; a full queue rejects the newest record."""

    def __init__(self) -> None:
        self.queue: deque[RawRecord] = deque()
        self.maxsize = DEFAULT_QUEUE_SIZE
        self.sinks: list[Sink] = []
        self.configured = False
        self.ever_configured = False
        self._capture: Callable[[RawRecord], None] | None = None
        self.retry_seconds = 30.0  # how long a transient outage is waited out per batch
        # The benchmarks pause draining to time the caller's path alone; nothing else should.
        self.paused = False
        self.lane_allowed = True  # False while a scope provider must fill fields (configure)
        self.events_allowed = True  # False when no sink takes analytics events (configure)
        self._init_runtime()
        self._reset_counters()
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork,
        )

    def _init_runtime(self) -> None:
        # The fast lane (see _emit.record_on_success): a wrapper may append straight to the
        # queue while its length is under `lane_limit` (audits) or `events_lane_limit`
        # (analytics): the queue bound while the lane is open, 0 while it is closed. One
        # number answers both questions on the hot path; _update_lanes() derives them.
        self.lane_limit = 0
        self.events_lane_limit = 0
        self._lock = threading.Lock()
        # Held while a sink exports: a fork waits for it, so the child never inherits a
        # driver (SQLite's C mutexes) frozen mid-call by the worker thread.
        self._export_lock = threading.Lock()
        self._fork_held = False
        self._wake = threading.Event()
        self._idle = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stop = False
        self._deadline = float("inf")  # a shutdown's deadline: backoff never waits past it
        self._in_flight = 0
        self._flushing = 0

    def _reset_counters(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retried = 0
        self.by_sink: dict[str, _SinkStats] = {}

    @property
    def capture(self) -> Callable[[RawRecord], None] | None:
        """The test capture that receives records instead of the queue (testing.capture())."""
        return self._capture

    @capture.setter
    def capture(self, receiver: Callable[[RawRecord], None] | None) -> None:
        self._capture = receiver
        self._update_lanes()

    def set_lanes(self, *, audits: bool, events: bool) -> None:
        """Allow or forbid the fast lane (configure(): no provider; events have a sink)."""
        self.lane_allowed = audits
        self.events_allowed = events
        self._update_lanes()

    def _update_lanes(self) -> None:
        running = self._thread is not None and not self._stop and self._capture is None
        self.lane_limit = self.maxsize if running and self.lane_allowed else 0
        self.events_lane_limit = self.lane_limit if self.events_allowed else 0

    def wake(self) -> None:
        """Wake the worker now (a batch is full)."""
        self._wake.set()

    # -- hot path ---------------------------------------------------------------------------

    def submit(self, raw: RawRecord) -> bool:
        """Queue *raw* for delivery; False (and counted) when the queue is full."""
        capture = self._capture
        if capture is not None:
            capture(raw)
            return True
        queue = self.queue
        if len(queue) >= self.maxsize:
            with self._lock:
                self.dropped += 1
            return False
        queue.append(raw)
        if len(queue) == BATCH_SIZE:
            self._wake.set()
        if self._thread is None and self.configured:
            self._start()
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    def install(self, sinks: Sequence[Sink], maxsize: int) -> None:
        """Start delivering to *sinks* (configure()); records queued before are delivered too."""
        with self._lock:
            self.sinks = list(sinks)
            self.maxsize = maxsize
            self._reset_counters()
            self.by_sink = {sink.name: _SinkStats() for sink in sinks}
            self.configured = True
            self.ever_configured = True
        self._start()  # an idle daemon thread costs nothing; records then skip submit()
        self._update_lanes()  # the new queue bound, also when the worker was running

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop = False
            self._deadline = float("inf")
            self._thread = threading.Thread(target=self._run, name="obs-sdk-dispatch", daemon=True)
            self._thread.start()
        self._update_lanes()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was exported and every sink flushed, or *timeout*."""
        deadline = time.monotonic() + timeout
        drained = self._wait_idle(deadline)
        for sink in list(self.sinks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with suppressed():
                try:
                    sink.flush(remaining)
                except Exception as exc:
                    count_error(f"flush:{sink.name}", exc)
                    drained = False
        return drained

    def _wait_idle(self, deadline: float) -> bool:
        if not self.configured:
            return not self.queue
        if self._thread is None and self.queue:
            self._start()
        self._flushing += 1  # no lingering for more records while someone waits
        self._wake.set()
        try:
            return self._wait_drained(deadline)
        finally:
            self._flushing -= 1

    def _wait_drained(self, deadline: float) -> bool:
        with self._idle:
            while self.queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    def shutdown(self, timeout: float) -> bool:
        """Flush within *timeout*, stop the worker and the sinks; records wait again after."""
        deadline = time.monotonic() + timeout
        done = self.flush(timeout) if self.configured else not self.queue
        self._deadline = deadline
        self.lane_limit = self.events_lane_limit = 0  # records take submit(), wait for a worker
        thread = self._thread
        self._stop = True
        self._wake.set()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            done = done and not thread.is_alive()
        for sink in self.sinks:
            with suppressed():
                try:
                    sink.shutdown(max(0.0, deadline - time.monotonic()))
                except Exception as exc:
                    count_error(f"shutdown:{sink.name}", exc)
        with self._lock:
            self.sinks = []
            self.configured = False
            self._thread = None
        return done

    def _before_fork(self) -> None:
        # Bounded: a sink stuck in an export must not make os.fork() hang.
        self._fork_held = self._export_lock.acquire(timeout=FORK_WAIT_SECONDS)

    def _after_fork_in_parent(self) -> None:
        if self._fork_held:
            self._fork_held = False
            self._export_lock.release()

    def _after_fork(self) -> None:
        # The child starts empty: records queued before the fork are the parent's to deliver
        # (copies here would be written twice). The worker thread did not survive the fork.
        self.queue.clear()
        self._init_runtime()
        self._reset_counters()
        self.by_sink = {sink.name: _SinkStats() for sink in self.sinks}
        for sink in self.sinks:
            try:
                sink.after_fork()
            except Exception as exc:
                count_error(f"fork:{sink.name}", exc)

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since configure(); submitted == queued + delivered + dropped + failed."""
        with self._lock:
            queued = len(self.queue) + self._in_flight
            result: dict[str, Any] = {
                "queued": queued,
                "delivered": self.delivered,
                "dropped": self.dropped,
                "failed": self.failed,
                "retried": self.retried,
            }
            result["by_sink"] = {name: s.as_dict() for name, s in self.by_sink.items()}
        result["submitted"] = queued + result["delivered"] + result["dropped"] + result["failed"]
        result["internal_errors"] = internal_errors()
        result.update(counters())
        return result

    def count_upload_failure(self, sink_name: str, n: int) -> None:
        """Count records a sink's own uploader lost after they were handed over."""
        with self._lock:
            stats = self.by_sink.get(sink_name)
            if stats is not None:
                stats.upload_failed += n

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        with suppressed():  # a sink's own DB writes and HTTP calls are never recorded
            while True:
                self._wake.wait(INTERVAL_SECONDS)
                self._wake.clear()
                self._drain()
                if self._stop and not self.queue:
                    return

    def _drain(self) -> None:
        queue = self.queue
        while queue and self.configured and not self.paused:
            if len(queue) < BATCH_SIZE and not (self._stop or self._flushing):
                self._wake.wait(LINGER_SECONDS)  # a full batch, or a flush, ends it sooner
                self._wake.clear()
            with self._lock:
                batch = [queue.popleft() for _ in range(min(len(queue), BATCH_SIZE))]
                self._in_flight = len(batch)
            delivered = 0
            try:
                delivered = self._deliver(batch)
            except Exception as exc:  # pragma: no cover - _deliver guards itself
                count_error("dispatch", exc)
            finally:
                # One lock for the counters and in_flight: stats() must never see a batch
                # both in flight and delivered (submitted would count it twice).
                with self._lock:
                    self.delivered += delivered
                    self.failed += len(batch) - delivered
                    self._in_flight = 0
        with self._idle:
            self._idle.notify_all()

    def _deliver(self, batch: list[RawRecord]) -> int:
        """Export *batch* to every sink that takes its kinds; return how many were delivered."""
        rendered: list[Any] = []
        ok: list[bool] = []
        kinds: list[str] = []
        # A sink that is alone in taking audits may render them itself (DatabaseSink on
        # SQLite: straight into the driver's row). With another audit sink, every sink gets
        # the same AuditRecord, so that they agree on its id.
        takers = [sink for sink in self.sinks if AUDIT in sink.kinds]
        alone = getattr(takers[0], "render_alone", None) if len(takers) == 1 else None
        for raw in batch:
            if raw[0] is STORED:  # rendered and stored at its commit: only the other sinks
                rendered.append(raw[1])
                ok.append(True)
                kinds.append(STORED_AUDIT)
                continue
            kind = raw[SPEC].kind
            kinds.append(kind)
            try:
                rendered.append(alone(raw) if alone is not None and kind == AUDIT else render(raw))
                ok.append(True)
            except Exception as exc:
                count_error("render", exc)
                rendered.append(None)
                ok.append(False)
        for sink in self.sinks:
            positions = [i for i in range(len(batch)) if ok[i] and kinds[i] in sink.kinds]
            if not positions:
                continue
            results = self._export(sink, [rendered[i] for i in positions])
            for i, good in zip(positions, results, strict=True):
                ok[i] = ok[i] and good
        return sum(ok)

    def _export(self, sink: Sink, records: list[Any]) -> list[bool]:
        """Export with retries; a batch that failed for good is retried row by row."""
        outcome = self._export_retrying(sink, records)
        if outcome == "ok":
            return [True] * len(records)
        if outcome == "outage" or len(records) == 1:
            self._count_failed(sink, len(records))
            return [False] * len(records)
        results = []
        for record in records:  # one bad record (a NUL byte PostgreSQL refuses) fails alone
            good = self._export_retrying(sink, [record]) == "ok"
            if not good:
                self._count_failed(sink, 1)
            results.append(good)
        return results

    def _count_failed(self, sink: Sink, n: int) -> None:
        with self._lock:
            self.by_sink.setdefault(sink.name, _SinkStats()).failed += n

    def _export_retrying(self, sink: Sink, records: list[Any]) -> str:
        """Return "ok", "outage" (transient errors outlasted the retry window) or "error"."""
        stats = self.by_sink.setdefault(sink.name, _SinkStats())
        give_up_at = min(time.monotonic() + self.retry_seconds, self._deadline)
        attempt = 0
        while True:
            try:
                with self._export_lock:
                    sink.export(records)
            except Exception as exc:
                if not sink.is_transient(exc):
                    if len(records) == 1:
                        count_error(f"sink:{sink.name}", exc)
                    return "error"
                delay = min(0.05 * 2**attempt, MAX_BACKOFF_SECONDS)
                if time.monotonic() + delay >= min(give_up_at, self._deadline):
                    count_error(f"sink:{sink.name}", exc)
                    return "outage"
                attempt += 1
                with self._lock:
                    self.retried += 1
                    stats.retried += 1
                if attempt == 1:
                    logger.warning(
                        "obs_sdk sink %s: %s; retrying %d records with backoff",
                        sink.name,
                        type(exc).__name__,
                        len(records),
                    )
                time.sleep(delay)
                continue
            with self._lock:
                stats.delivered += len(records)
            return "ok"


dispatcher = Dispatcher()
