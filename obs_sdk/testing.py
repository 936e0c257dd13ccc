"""Test helpers: capture() records synchronously, so tests never sleep; a clock and ids.

::

    from obs_sdk.testing import IncrementingIds, SteppingClock, capture

    with capture() as cap:
        download("f_1")
    assert cap.audits[0]["action"] == "file.downloaded"

Deterministic records: ``obs.configure(..., clock=SteppingClock(), id_factory=IncrementingIds())``
stamps each record with a time one millisecond after the previous one and numbers its id, so
whole records can be compared as dicts. Both are part of the configuration: ``shutdown()``
(and the next ``configure()`` without them) goes back to the real clock and UUIDv7 ids.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._hotpath._records import AUDIT, STORED, AnalyticsEvent, AuditRecord, RawRecord, render

__all__ = ["CaptureSink", "IncrementingIds", "SteppingClock", "capture"]


class CaptureSink:
    """Keeps every record emitted while it is installed, rendered, in memory. Thread-safe.

    ``audits`` and ``events`` are lists of plain dicts keyed by SPEC's column names
    (``metadata`` and ``properties`` as Python objects); ``records`` holds the rendered
    ``AuditRecord`` / ``AnalyticsEvent`` objects in order.
    """

    name = "capture"
    kinds = frozenset({AUDIT, "event", "group"})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[AuditRecord | AnalyticsEvent] = []

    def receive(self, raw: RawRecord) -> None:
        """Render *raw* now, on the caller's thread, and keep it."""
        if raw[0] is STORED:  # already rendered, and stored by its own transaction
            self.export([raw[1]])
            return
        self.export([render(raw)])

    def export(self, batch: Sequence[AuditRecord | AnalyticsEvent], /) -> None:
        """Keep *batch* (it refuses nothing)."""
        with self._lock:
            self.records.extend(batch)

    def is_transient(self, error: Exception, /) -> bool:
        """Nothing here is transient."""
        return False

    def flush(self, timeout: float, /) -> None:
        """Nothing to flush."""
        return None

    def shutdown(self, timeout: float, /) -> None:
        """Nothing to stop."""
        return None

    def after_fork(self) -> None:
        """Nothing to reset."""
        return None

    @property
    def audits(self) -> list[dict[str, Any]]:
        """Audit records as dicts keyed by column name."""
        with self._lock:
            return [r.as_dict() for r in self.records if isinstance(r, AuditRecord)]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Analytics events (and group identifies) as dicts."""
        with self._lock:
            return [r.as_dict() for r in self.records if isinstance(r, AnalyticsEvent)]

    def as_dicts(self) -> list[dict[str, Any]]:
        """Every record as a dict, in emission order."""
        with self._lock:
            return [r.as_dict() for r in self.records]

    def clear(self) -> None:
        """Forget what was captured so far."""
        with self._lock:
            self.records.clear()


@contextmanager
def capture() -> Iterator[CaptureSink]:
    """Capture every record emitted inside the block, in any thread, instead of delivering it.

    Works without ``configure()``. Records are rendered the moment they are emitted (a
    transaction's records at its commit), so assertions need no flush and no sleep.
    Captures nest; the innermost one receives.
    """
    sink = CaptureSink()
    previous = dispatcher.capture
    dispatcher.capture = sink.receive
    try:
        yield sink
    finally:
        dispatcher.capture = previous


class SteppingClock:
    """A clock for ``configure(clock=...)``: starts at *start_ns* and steps on every read.

    Every record made while it is configured is stamped by it: the first at *start_ns*
    (2026-01-01T00:00:00Z by default), each next one *step_ns* (1 ms) later, so tests can
    assert ``occurred_at`` exactly. A record reads the clock once, on the caller's thread,
    when the call ends (or starts, for ``when="start"``). Thread-safe (an ``itertools.count``).
    ``shutdown()`` restores the real clock (``time.time_ns``).
    """

    def __init__(self, start_ns: int = 1_767_225_600_000_000_000, step_ns: int = 1_000_000) -> None:
        self._counter = itertools.count(start_ns, step_ns)

    def __call__(self) -> int:
        """Return the next time, in ns since the epoch."""
        return next(self._counter)


class IncrementingIds:
    """An id factory for ``configure(id_factory=...)``: UUIDs 1, 2, 3, ... in order.

    Ids are made where records are rendered (the dispatcher thread, a commit, or the
    caller's thread under ``capture()``), in that order. Thread-safe.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, time_ns: int) -> uuid.UUID:
        """Return the next id."""
        return uuid.UUID(int=next(self._counter))
