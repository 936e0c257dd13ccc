"""The dispatcher: bounded queue, batches, retries, flush/shutdown, and the stats invariant.

These tests install a hand-written sink with ``obs_sdk._delivery._dispatch.dispatcher.install`` (the
same call configure() makes): a sink the test can block on an Event, make fail, or make
fail transiently, which no real database does on demand. Records are made through the
public API (``obs.record_audit`` and ``@obs.audited``) and counted through ``obs.stats()``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import obs_sdk as obs
from obs_sdk._delivery._dispatch import MAX_BATCH_SIZE, Limits, dispatcher
from obs_sdk._hotpath._records import AuditRecord


class ControlledSink:
    """A Sink the test drives: it can hang on an Event, fail for good, or fail transiently."""

    name = "controlled"
    kinds = frozenset({"audit"})

    def __init__(self) -> None:
        self.received: list[AuditRecord] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when an export is waiting at the gate
        self.failing = False
        self.poison: set[str] = set()  # actions whose records are refused for good
        self.transient_failures = 0  # the next n exports raise a transient error
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def export(self, batch: Sequence[AuditRecord], /) -> None:
        if not self.gate.is_set():
            self.entered.set()
            self.gate.wait()
        with self._lock:
            if self.transient_failures:
                self.transient_failures -= 1
                raise ConnectionError("transient outage")
            if self.failing:
                raise ValueError("refused for good")
            if any(r.action in self.poison for r in batch):
                raise ValueError("poison record in batch")
            self.batch_sizes.append(len(batch))
            self.received.extend(batch)

    def is_transient(self, error: Exception, /) -> bool:
        return isinstance(error, ConnectionError)

    def flush(self, timeout: float, /) -> None:
        return None

    def shutdown(self, timeout: float, /) -> None:
        return None

    def after_fork(self) -> None:
        return None

    def block(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def unblock(self) -> None:
        self.gate.set()


def install(*sinks: Any, queue_size: int = 10_000, **limits: Any) -> None:
    """Install *sinks* as configure() does, with the given bounds."""
    dispatcher.install(list(sinks), Limits(queue_size, **limits))


@pytest.fixture
def sink() -> Iterator[ControlledSink]:
    """A ControlledSink installed as the only sink (queue of 10 000); unblocked at teardown."""
    s = ControlledSink()
    install(s, queue_size=10_000)
    yield s
    s.unblock()


def invariant_holds(stats: dict[str, Any]) -> bool:
    return stats["submitted"] == (
        stats["queued"] + stats["delivered"] + stats["dropped"] + stats["failed"]
    )


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str) -> str:
    return f"bytes of {file_id}"


class TestDelivery:
    """Batches reach the sink once each, in order, with per-sink counters."""

    def test_every_record_delivered_once_in_batches(self, sink: ControlledSink) -> None:
        """1200 records arrive exactly once, in batches no larger than MAX_BATCH_SIZE."""
        for i in range(1200):
            download(f"f_{i}")
        assert obs.flush()
        assert [r.resource_id for r in sink.received] == [f"f_{i}" for i in range(1200)]
        assert max(sink.batch_sizes) <= MAX_BATCH_SIZE
        stats = obs.stats()
        assert (stats["submitted"], stats["delivered"], stats["queued"]) == (1200, 1200, 0)
        assert stats["by_sink"]["controlled"]["delivered"] == 1200

    def test_sink_exports_with_instrumentation_suppressed(self) -> None:
        """A sink that calls audited code while exporting creates no new record."""

        class ChattySink(ControlledSink):
            def export(self, batch: Sequence[AuditRecord], /) -> None:
                download("from inside the sink")
                super().export(batch)

        s = ChattySink()
        install(s, queue_size=100)
        obs.record_audit("a.b")
        assert obs.flush()
        assert [r.action for r in s.received] == ["a.b"]
        assert obs.stats()["submitted"] == 1

    def test_stats_counted_since_the_last_install(self, sink: ControlledSink) -> None:
        """stats() restarts from zero at each configuration."""
        obs.record_audit("a.b")
        assert obs.flush()
        install(ControlledSink(), queue_size=100)
        stats = obs.stats()
        assert (stats["submitted"], stats["delivered"]) == (0, 0)


class TestRetries:
    """Transient errors are retried with backoff; a batch that failed for good goes row by row."""

    def test_transient_errors_are_retried_without_duplicates(self, sink: ControlledSink) -> None:
        """Two transient failures, then success: every record once, retried counted."""
        sink.transient_failures = 2
        for i in range(10):
            obs.record_audit("a.b", metadata={"i": i})
        assert obs.flush()
        assert sorted(r.metadata["i"] for r in sink.received) == list(range(10))
        stats = obs.stats()
        assert stats["retried"] == 2
        assert stats["by_sink"]["controlled"]["retried"] == 2
        assert (stats["delivered"], stats["failed"]) == (10, 0)

    @pytest.mark.swallows_internal_errors
    def test_poison_record_fails_alone(self, sink: ControlledSink) -> None:
        """A batch refused because of one record is retried row by row: only that one fails."""
        obs.shutdown()  # queue without a worker, so the 20 records form one batch
        for i in range(20):
            obs.record_audit("poison" if i == 13 else "fine", metadata={"i": i})
        sink.poison = {"poison"}
        install(sink, queue_size=10_000)
        assert obs.flush()
        assert [r.metadata["i"] for r in sink.received] == [i for i in range(20) if i != 13]
        stats = obs.stats()
        assert (stats["delivered"], stats["failed"], stats["submitted"]) == (19, 1, 20)
        assert stats["by_sink"]["controlled"]["failed"] == 1
        assert stats["internal_errors"] == 1

    @pytest.mark.swallows_internal_errors
    def test_a_failing_sink_never_reaches_the_caller(self, sink: ControlledSink) -> None:
        """With a sink that always fails, calls return normally and failures are counted."""
        sink.failing = True
        assert [download(f"f_{i}") for i in range(5)] == [f"bytes of f_{i}" for i in range(5)]
        assert obs.flush()
        stats = obs.stats()
        assert (stats["failed"], stats["delivered"], stats["submitted"]) == (5, 0, 5)


class TestHangingSink:
    """A sink that hangs never blocks callers; flush(timeout) gives up in time."""

    def test_hanging_sink(self, sink: ControlledSink) -> None:
        """Callers return, flush returns False, the queue stays bounded and drops are counted."""
        install(sink, queue_size=50)
        sink.block()
        download("first")
        assert sink.entered.wait(5.0)  # the worker is stuck inside export
        results = [download(f"f_{i}") for i in range(500)]
        assert results == [f"bytes of f_{i}" for i in range(500)]
        assert obs.flush(timeout=0.2) is False
        stats = obs.stats()
        # The full intake, the sink's queue if the router got to fill it (timing: callers
        # that drop let it run now and then), and the one record in the hung export.
        queued = stats["queued"]
        assert queued in (51, 101), queued
        assert stats["dropped"] == 501 - queued
        assert stats["submitted"] == 501
        assert invariant_holds(stats)
        sink.unblock()
        assert obs.flush()
        stats = obs.stats()
        assert (stats["delivered"], stats["dropped"], stats["queued"]) == (queued, 501 - queued, 0)
        assert len(sink.received) == queued


class TestBeforeConfigure:
    """Before configure(), records wait in the bounded queue and nothing is delivered."""

    def test_records_wait_until_a_sink_is_installed(self) -> None:
        """flush() reports undelivered work; installing a sink delivers what waited."""
        for i in range(3):
            obs.record_audit("early", metadata={"i": i})
        assert obs.flush(timeout=0.1) is False
        assert obs.stats()["queued"] == 3
        s = ControlledSink()
        install(s, queue_size=100)
        assert obs.flush()
        assert [r.metadata["i"] for r in s.received] == [0, 1, 2]


class TestStatsConsistency:
    """stats() is consistent while the worker delivers: a record is never counted twice."""

    def test_submitted_never_exceeds_what_was_made_during_delivery(
        self, sink: ControlledSink
    ) -> None:
        """A thread polling stats() while records drain never sees a record counted twice."""
        made = 6000
        overcounts: list[dict[str, Any]] = []
        done = threading.Event()
        submitted_so_far = [0]

        def poll() -> None:
            while not done.is_set():
                low = submitted_so_far[0]
                stats = obs.stats()
                if not low <= stats["submitted"] <= made or not invariant_holds(stats):
                    overcounts.append(stats)

        # A tiny switch interval makes threads interleave between any two bytecodes, so a
        # window in which one record is counted twice is hit if it exists.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        poller = threading.Thread(target=poll)
        poller.start()
        try:
            for i in range(made):
                obs.record_audit("a.b", metadata={"i": i})
                submitted_so_far[0] = i + 1
                if i % 1000 == 999:  # several drains, each with a window to hit
                    assert obs.flush()
            assert obs.flush()
        finally:
            done.set()
            poller.join()
            sys.setswitchinterval(interval)
        assert overcounts[:3] == []
        assert obs.stats()["delivered"] == made
        assert len(sink.batch_sizes) > 1


class QueueMachine(RuleBasedStateMachine):
    """Submit, block, unblock+flush and fail in any order against a queue of 3."""

    QUEUE_SIZE = 3

    def __init__(self) -> None:
        super().__init__()
        self.sink = ControlledSink()
        self.made = 0
        self.blocked = False

    @initialize()
    def install(self) -> None:
        install(self.sink, queue_size=self.QUEUE_SIZE)

    @rule(n=st.integers(min_value=1, max_value=6))
    def submit(self, n: int) -> None:
        for _ in range(n):
            obs.record_audit("state.machine")
        self.made += n

    @rule()
    def block(self) -> None:
        self.sink.block()
        self.blocked = True

    @rule()
    def unblock_and_flush(self) -> None:
        self.sink.unblock()
        self.blocked = False
        assert obs.flush(timeout=10.0)
        stats = obs.stats()
        assert stats["queued"] == 0
        assert stats["delivered"] == len(self.sink.received)

    @rule(failing=st.booleans())
    def fail(self, failing: bool) -> None:
        self.sink.failing = failing

    @invariant()
    def counts_add_up(self) -> None:
        stats = obs.stats()
        assert stats["submitted"] == self.made
        assert invariant_holds(stats)

    @invariant()
    def memory_bounded(self) -> None:
        # At most a full queue plus the one batch the worker took out of it.
        assert obs.stats()["queued"] <= 2 * self.QUEUE_SIZE

    def teardown(self) -> None:
        self.sink.unblock()
        obs.shutdown(timeout=10.0)


@pytest.mark.swallows_internal_errors
class TestQueueInvariant:
    """The stateful test of SPEC's invariant: submitted == queued + delivered + dropped + failed."""

    def test_queue_state_machine(self) -> None:
        """Any submit/block/unblock/fail sequence keeps the counts exact and the queue bounded."""
        QueueMachine.TestCase().runTest()


class HoldingSink(ControlledSink):
    """A sink whose destination keeps what it was handed until released (a client's queue)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = True

    def flush(self, timeout: float, /) -> bool:
        return not self.holding


class TestFlushReportsTheDestination:
    """flush() is True only when the sinks' destinations hold nothing either."""

    def test_flush_is_false_while_a_destination_holds_records(self) -> None:
        """Everything exported, but the sink says its destination still holds some."""
        sink = HoldingSink()
        install(sink)
        obs.record_audit("a.b")
        assert obs.flush(timeout=1.0) is False
        sink.holding = False
        assert obs.flush()
        assert obs.stats()["delivered"] == 1


class TestOverflow:
    """overflow="drop" drops the newest at once; "block" lets callers wait for room first."""

    def test_block_waits_for_room_and_loses_nothing(self, sink: ControlledSink) -> None:
        """With a stuck sink and a generous timeout, callers wait; once it moves, all arrive."""
        install(sink, queue_size=5, overflow="block", block_timeout=10.0)
        sink.block()
        done = threading.Event()

        def caller() -> None:
            for i in range(40):
                obs.record_audit("blocking", metadata={"i": i})
            done.set()

        thread = threading.Thread(target=caller)
        thread.start()
        assert sink.entered.wait(5.0)
        assert not done.wait(0.3)  # the caller is waiting for room, not dropping
        sink.unblock()
        thread.join(10.0)
        assert done.is_set()
        assert obs.flush()
        stats = obs.stats()
        assert (stats["delivered"], stats["dropped"], stats["submitted"]) == (40, 0, 40)
        assert [r.metadata["i"] for r in sink.received] == list(range(40))

    def test_block_gives_up_after_the_timeout_and_counts(self, sink: ControlledSink) -> None:
        """A sink that stays stuck: each caller waits at most block_timeout, then drops."""
        install(sink, queue_size=5, overflow="block", block_timeout=0.01)
        sink.block()
        obs.record_audit("first")
        assert sink.entered.wait(5.0)
        for i in range(30):
            obs.record_audit("blocking", metadata={"i": i})
        stats = obs.stats()
        assert stats["dropped"] > 0
        assert stats["submitted"] == 31
        assert invariant_holds(stats)
        sink.unblock()
        assert obs.flush()
        assert invariant_holds(obs.stats())

    def test_drop_counts_per_sink(self, sink: ControlledSink) -> None:
        """A record the sink's queue had no room for is counted in by_sink and at the top."""
        install(sink, queue_size=5)
        sink.block()
        obs.record_audit("first")
        assert sink.entered.wait(5.0)
        for i in range(30):
            obs.record_audit("dropping", metadata={"i": i})
            obs.flush(timeout=0.01)  # the router routes; the sink's queue fills, then drops
        stats = obs.stats()
        by_sink = stats["by_sink"]["controlled"]
        assert set(by_sink) == {
            "submitted",
            "queued",
            "delivered",
            "dropped",
            "failed",
            "retried",
            "upload_failed",
        }
        assert by_sink["dropped"] > 0
        assert by_sink["submitted"] == by_sink["queued"] + by_sink["dropped"]
        assert invariant_holds(stats)
        sink.unblock()
        assert obs.flush()


class TestConfigurationOfQueues:
    """The queue options are checked at configure()."""

    @pytest.mark.parametrize(
        ("options", "named"),
        [
            ({"overflow": "wait"}, "overflow"),
            ({"block_timeout": -1}, "block_timeout"),
            ({"block_timeout": "0.1"}, "block_timeout"),
            ({"block_timeout": float("inf")}, "block_timeout"),
            ({"block_timeout": True}, "block_timeout"),
            ({"max_queue_bytes": 1000}, "max_queue_bytes"),
            ({"max_queue_bytes": 2.5e6}, "max_queue_bytes"),
            ({"queue_size": 0}, "queue_size"),
            ({"handle_signals": "yes"}, "handle_signals"),
        ],
    )
    def test_bad_values_raise(self, options: dict[str, Any], named: str) -> None:
        """Each wrong value is a ConfigurationError naming the option."""
        with pytest.raises(obs.ConfigurationError, match=named):
            obs.configure("sqlite://", **options)

    def test_good_values_are_taken(self) -> None:
        """block with a timeout, and a byte bound, configure without complaint."""
        obs.configure(
            "sqlite://",
            overflow="block",
            block_timeout=0.2,
            max_queue_bytes=1024 * 1024,
            handle_signals=False,
        )
        obs.record_audit("a.b")
        assert obs.flush()
