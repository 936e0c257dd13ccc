"""One sink's delivery: its bounded queue, counters, and export with retries.

The Dispatcher (``_dispatch``) owns the threads, the lock and the state machine; this module
holds what one configuration's delivery is made of (``Run``: its limits, one ``Pipeline``
per sink, a ``Route`` per record kind) and the export a sink's worker runs: retries of
transient errors with backoff, a batch that failed for good retried row by row, and failure
logs that name records by id and action only.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from obs_sdk._delivery._sinks import Sink
from obs_sdk._guard import count_error
from obs_sdk._hotpath._records import AUDIT, EVENT, GROUP, STORED_AUDIT, RawRecord, render

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_BLOCK_TIMEOUT",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "DELIVERED",
    "DROPPED",
    "FAILED",
    "MAX_BATCH_SIZE",
    "OVERFLOW_MODES",
    "DeliveryError",
    "DropLog",
    "Limits",
    "Pipeline",
    "Route",
    "Run",
    "SinkStats",
    "State",
    "export",
    "sink_stats",
    "take_batch",
]

logger = logging.getLogger("obs_sdk")

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_BLOCK_TIMEOUT = 0.05
OVERFLOW_MODES = ("drop", "block")
BATCH_SIZE = 500  # records per export (one transaction on the SQL sink)
MAX_BATCH_SIZE = 5000  # per export when a sink's queue is deep (see take_batch)
INTERVAL_SECONDS = 0.2  # how long a sink's worker sleeps with nothing to do
# While records keep coming, a part-full batch waits this long for more: each batch is one
# transaction (a commit), so batches of 500 cost far less per record than of 20.
LINGER_SECONDS = 0.01
RETRY_SECONDS = 30.0  # how long a transient outage is waited out per batch
MAX_BACKOFF_SECONDS = 2.0
RETRY_WARNING_SECONDS = 1.0  # a batch retried this long is logged (once)
# The intake holds raw records (template values, metadata as the caller gave it) until the
# router renders them: once records are seen to be large, its bound in records shrinks so
# that it holds about this share of max_queue_bytes.
INTAKE_SHARE = 16
BATCH_SHARE = 16  # a batch in export holds at most this share of max_queue_bytes

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


class SinkStats:
    __slots__ = ("delivered", "dropped", "failed", "retried", "submitted", "upload_failed")

    def __init__(self) -> None:
        self.submitted = 0
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.retried = 0
        self.upload_failed = 0


class Pipeline:
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
        self.stats = SinkStats()
        self.drop_reason = ""
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()

    def queued(self) -> int:
        return len(self.queue) + len(self.in_flight)


class Route:
    """Where records of one kind go, and how the router renders them."""

    __slots__ = ("pipelines", "primary", "render")

    def __init__(self, pipelines: list[Pipeline], render: Callable[[RawRecord], Any]) -> None:
        self.pipelines = pipelines
        self.primary = pipelines[0]
        self.render = render


def routes_for(pipelines: list[Pipeline]) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for kind in _KINDS:
        taking = [p for p in pipelines if kind in p.sink.kinds]
        if not taking:
            continue
        # A sink alone in taking audits may render them itself (the SQL sink: straight into
        # its driver's row). With another audit sink, every sink gets the same AuditRecord,
        # so that they agree on its id.
        alone = getattr(taking[0].sink, "render_alone", None) if len(taking) == 1 else None
        routes[kind] = Route(taking, alone if kind == AUDIT and alone is not None else render)
    return routes


class DropLog:
    """What was last said about one place's drops (rate-limited warnings)."""

    __slots__ = ("reported", "warned_at")

    def __init__(self) -> None:
        self.reported = 0
        self.warned_at: float | None = None


class Run:
    """One configuration's delivery: its limits, pipelines, routes, threads and counters."""

    def __init__(self, sinks: Sequence[Sink], limits: Limits, fast_lane: bool) -> None:
        self.limits = limits
        self.fast_lane = fast_lane
        self.pipelines = [Pipeline(sink) for sink in sinks]
        self.routes = routes_for(self.pipelines)
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
        self.drop_logs: dict[str, DropLog] = {}

    def intake_dropped(self) -> int:
        # The count's value without advancing it ("count(5)"): exact, lock-free on the
        # caller's side (the drop path costs a next() and nothing else).
        return int(repr(self.intake_drops)[6:-1])


def export(run: Run, p: Pipeline, records: list[Any], lock: threading.Lock) -> list[str]:
    """Export with retries; a batch that failed for good is retried row by row."""
    outcome, refused = _export_retrying(run, p, records, lock)
    if outcome == "ok":
        return outcomes(len(records), refused)
    if outcome == "outage" or len(records) == 1:
        return [FAILED] * len(records)
    results = []
    for record in records:  # one bad record (a value the database refuses) fails alone
        outcome, refused = _export_retrying(run, p, [record], lock)
        results.append(FAILED if outcome != "ok" else DROPPED if refused else DELIVERED)
    return results


def _export_retrying(
    run: Run, p: Pipeline, records: list[Any], lock: threading.Lock
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
                    log_failure(p, records, exc, "refused for good")
                return "error", ()
            delay = min(0.05 * 2**attempt, MAX_BACKOFF_SECONDS)
            now = time.monotonic()
            if now + delay >= min(give_up_at, run.deadline):
                log_failure(p, records, exc, "the outage outlasted the retries")
                return "outage", ()
            attempt += 1
            with lock:
                p.stats.retried += 1
            if not warned and now - started >= RETRY_WARNING_SECONDS:
                warned = True  # a lock held for a moment by another process is no news
                logger.warning(
                    "obs_sdk sink %s: %s for %.1f s; still retrying %d records with backoff",
                    p.name,
                    error_class(exc),
                    now - started,
                    len(records),
                )
            time.sleep(delay)
            continue
        if refused:
            with lock:
                p.drop_reason = (
                    f"the {p.label} sink's destination refused them (its own queue is full)"
                )
        return "ok", refused or ()


def take_batch(queue: deque[tuple[Any, int, bool]], max_bytes: int) -> list[tuple[Any, int, bool]]:
    """A batch from the front of *queue*: BATCH_SIZE items, more when the queue is deep.

    A sink that falls behind takes up to MAX_BATCH_SIZE at once: a transaction and its
    round trips cost the same for more rows, and under a busy caller each of them waits for
    the GIL. Never more than *max_bytes*: a driver copies what it binds, so the copy of a
    batch of large records stays a small share of max_queue_bytes.
    """
    most = min(MAX_BATCH_SIZE, max(BATCH_SIZE, len(queue) // 2))
    batch = [queue.popleft()]
    size = batch[0][1]
    while queue and len(batch) < most:
        size += queue[0][1]
        if size > max_bytes:
            break
        batch.append(queue.popleft())
    return batch


def outcomes(n: int, refused: Sequence[int]) -> list[str]:
    outcomes = [DELIVERED] * n
    for i in refused:
        outcomes[i] = DROPPED
    return outcomes


def sink_stats(p: Pipeline) -> dict[str, int]:
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


def describe(records: Sequence[Any]) -> str:
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


def error_class(exc: BaseException) -> str:
    """The error's class and, for a database error, its driver error's class and SQLSTATE."""
    text = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None:
        text += f" from {type(orig).__module__}.{type(orig).__name__}"
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        if code:
            text += f" ({code})"
    return text


def log_failure(p: Pipeline, records: Sequence[Any], exc: BaseException, why: str) -> None:
    count_error(
        f"sink:{p.name}",
        DeliveryError(
            f"the {p.label} sink could not deliver {len(records)} record(s) ({why}): "
            f"{error_class(exc)}; {describe(records)}"
        ),
    )
