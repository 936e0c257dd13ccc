"""The dispatcher's fast rendering gives exactly what the plain, slot-by-slot path gives.

Each shortcut here (one compiled function per plan, redaction and the size bound in one pass,
a reused C JSON encoder, cached calendar fields) is checked against the straightforward code
it replaces, over generated inputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import random
import uuid
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine

import obs_sdk as obs
from obs_sdk import _config
from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._delivery._redact import Redactor, limit_size, to_json
from obs_sdk._delivery._sanitize import bound_mapping
from obs_sdk._delivery._sinks import _sqlite_row, _sqlite_row_of, _sqlite_time
from obs_sdk._hotpath import _records
from obs_sdk._hotpath._params import Params
from obs_sdk._hotpath._plain import optional_text
from obs_sdk._hotpath._records import _Uuid7, render_audit, to_datetime, uuid7
from obs_sdk._hotpath._templates import Plan
from obs_sdk.testing import capture

UTC = datetime.timezone.utc
TEXTS = ("resource.type", "resource.id", "resource.name")

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
secretish_keys = st.sampled_from(["token", "Api-Key", "name", "n", "session_id", "x", "password"])


def target(a: Any, b: Any, *rest: Any, c: Any = None, **extra: Any) -> None: ...


# Every kind of slot: a constant, a field that keeps its type, text with a format spec and
# conversions, and a field missing from the plan.
TEMPLATES: list[dict[str, Any]] = [
    {"resource.type": "file", "resource.id": "{a}", "metadata": {"b": "{b}", "k": 7}},
    {"resource.id": "{a!r}-{b}", "resource.name": "{c!s:>6}", "metadata": {"n": "{a}/{b!a}"}},
    {"resource.type": "{b}", "metadata": {"rest": "{rest}", "extra": "{extra}", "t": "x"}},
    {"resource.id": 42, "metadata": {}},
]


def plan_for(template: dict[str, Any]) -> Plan:
    plan = Plan("target", Params(target), "success")
    for name, spec in template.items():
        if name == "metadata":
            plan.add_mapping(name, spec)
        else:
            plan.add(name, spec)
    return plan


def slot_by_slot(plan: Plan, values: tuple[Any, ...]) -> list[Any]:
    return [optional_text(plan.render(name, values)) for name in TEXTS] + [
        plan.render_mapping("metadata", values)
    ]


class TestCompiledRenderer:
    @pytest.mark.parametrize("template", TEMPLATES)
    @given(values=st.tuples(plain, plain, plain, plain, plain, plain))
    def test_matches_rendering_slot_by_slot(
        self, template: dict[str, Any], values: tuple[Any, ...]
    ) -> None:
        """For any field values, the compiled function renders what render() gives."""
        plan = plan_for(template)
        values = values[: len(plan.resolvers)]
        assert list(plan.renderer(TEXTS, "metadata")(values)) == slot_by_slot(plan, values)

    @pytest.mark.swallows_internal_errors
    def test_a_failing_slot_alone_is_lost_and_counted(self, sqlite_url: str) -> None:
        """A format spec that does not fit its value nulls that slot; the others render."""
        obs.configure(database=sqlite_url)

        @obs.audited("op", resource=obs.Resource("file", "{n:>5d}"), metadata={"n": "{n}"})
        def op(n: Any) -> None: ...

        with capture() as cap:
            op("not a number")
            op(7)
        assert [(a["resource_type"], a["resource_id"], a["metadata"]) for a in cap.audits] == [
            ("file", None, {"n": "not a number"}),
            ("file", "    7", {"n": 7}),
        ]
        assert obs.stats()["internal_errors"] == 1

    def test_a_metadata_callable_gives_the_whole_mapping(self) -> None:
        """metadata= as one callable: its dict, or anything else under "value"."""
        plan = Plan("target", Params(target), "success")
        plan.add_mapping("metadata", lambda call: call)
        assert plan.renderer((), "metadata")(({"a": 1},)) == ({"a": 1},)
        assert plan.renderer((), "metadata")((5,)) == ({"value": 5},)


class TestOnePassCleaning:
    @given(st.dictionaries(secretish_keys | st.text(max_size=6), plain, max_size=6))
    def test_clean_is_redact_then_limit(self, data: dict[str, Any]) -> None:
        """Redacting and bounding in one pass equals redact() then limit_size()."""
        redactor = Redactor(["x"])
        for limit in (64, 8192):
            assert redactor.clean(data, limit) == limit_size(redactor.redact(data), limit)

    @given(plain)
    def test_the_reused_encoder_writes_what_json_dumps_writes(self, value: Any) -> None:
        """The C encoder built once serialises like json.dumps with the same options."""
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        assert to_json(value) == expected


class TestTimes:
    @given(st.lists(st.integers(-(10**18), 4 * 10**18), min_size=1, max_size=20))
    def test_to_datetime_across_seconds_in_any_order(self, stamps: list[int]) -> None:
        """The cached calendar fields never leak from one second into another."""
        epoch = datetime.datetime(1970, 1, 1, tzinfo=UTC)
        for ns in stamps + [s + 1_000 for s in stamps]:
            assert to_datetime(ns) == epoch + datetime.timedelta(microseconds=ns // 1000)

    @given(
        st.lists(
            st.datetimes(min_value=datetime.datetime(1, 1, 1), timezones=st.just(UTC)),
            min_size=1,
            max_size=20,
        )
    )
    def test_sqlite_text_is_naive_utc_iso_with_microseconds(
        self, moments: list[datetime.datetime]
    ) -> None:
        """SQLite's stored text, microseconds always present (even when they are 0)."""
        for moment in moments + [m.replace(microsecond=0) for m in moments]:
            expected = moment.replace(tzinfo=None).isoformat(" ", "microseconds")
            assert _sqlite_time(moment) == expected


class TestIds:
    @given(st.lists(st.integers(0, 2**47), min_size=1, max_size=50), st.integers(1, 5000))
    def test_uuid7_ids_only_ever_increase(self, stamps_ms: list[int], repeats: int) -> None:
        """Any clock, even one that stands still for 5000 ids or steps back: ids increase.

        They are version 7, RFC variant, and carry their millisecond unless the clock went
        back or one millisecond ran out of its 4096 sequence numbers (then a later one).
        """
        make = _Uuid7()
        stamps = [ms * 1_000_000 for ms in stamps_ms] + [stamps_ms[-1] * 1_000_000] * repeats
        ids = [make(ns) for ns in stamps]
        assert all(a.int < b.int for a, b in itertools.pairwise(ids))
        assert {(u.version, u.variant) for u in ids} == {(7, uuid.RFC_4122)}
        latest = 0
        for ns, made in zip(stamps, ids, strict=True):
            latest = max(latest, ns // 1_000_000)
            assert made.int >> 80 >= latest
        assert ids[0].int >> 80 == stamps_ms[0]

    def test_random_seed_does_not_repeat_ids(self) -> None:
        """random.seed(same) before each id (a test, a simulation) changes nothing.

        The random bits come from obs_sdk's own generator, seeded from the operating
        system: two ids made after the same seed differ in all of their 62 random bits'
        worth, not only in their millisecond.
        """
        low = (1 << 62) - 1
        make = _Uuid7()
        made = []
        for ms in (1, 2):
            random.seed(20261205)
            made.append(make.value(1_767_225_600_000_000_000 + ms * 1_000_000))
        assert made[0] & low != made[1] & low

    def test_a_forked_child_makes_other_ids_than_its_parent(self) -> None:
        """After fork the child's generator is reseeded: it does not repeat the parent's ids.

        (The random module reseeds itself after fork too; obs_sdk's own generator must.)
        """
        ns = 1_767_225_600_000_000_000
        read, write = os.pipe()
        with warnings.catch_warnings():  # 3.12+: fork() of a process with threads warns
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: one id, then leave without running anything of pytest's
            try:
                os.write(write, uuid7.hex(ns).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = pipe.read()
        os.waitpid(pid, 0)
        parent = uuid7.hex(ns)
        assert len(child) == 32
        assert child[-15:] != parent[-15:]  # the random tail (the last 60 of 62 bits)

    def test_a_replacement_id_keeps_its_place_in_time(self) -> None:
        """A collided UUIDv7 is replaced by one of the same millisecond and sequence."""
        taken = uuid7(1_767_225_600_000_000_000)
        replacement = uuid7.replacing(taken)
        assert replacement != taken
        assert replacement.int >> 64 == taken.int >> 64
        assert (replacement.version, replacement.variant) == (7, uuid.RFC_4122)
        other = uuid7.replacing(uuid.UUID(int=1))  # not a UUIDv7 (a test's id_factory)
        assert (other.version, other.variant) == (7, uuid.RFC_4122)


class TestRowsRenderedAlone:
    """On SQLite, a database that is the only audit sink renders rows straight from records."""

    @given(
        st.lists(
            st.tuples(st.integers(0, 4 * 10**18), st.text(max_size=12), plain),
            min_size=1,
            max_size=8,
        )
    )
    def test_the_row_is_the_records_row(self, calls: list[tuple[int, str, Any]]) -> None:
        """Same row as rendering the AuditRecord first; the default ids are UUIDv7 hex."""
        clock = iter(ns for ns, _, _ in calls for _ in range(2))
        ids: list[Any] = []  # the id factory's source, refilled below
        raws = queued(
            lambda: next(clock), [(name, value) for _, name, value in calls], ids.__getitem__
        )
        ids[:] = [iter(uuid.UUID(int=n) for n in range(10**6))]
        expected = [_sqlite_row(render_audit(raw)) for raw in raws]
        ids[:] = [iter(uuid.UUID(int=n) for n in range(10**6))]
        assert [_sqlite_row_of(raw) for raw in raws] == expected
        _records.config = dataclasses.replace(_config.current(), id_factory=uuid7)
        for raw, row in zip(raws, expected, strict=True):
            alone = _sqlite_row_of(raw)
            assert alone[1:] == row[1:]
            assert uuid.UUID(alone[0]).version == 7

    def test_the_dispatcher_uses_it_only_when_alone(self, sqlite_url: str) -> None:
        """Alone, the database sink is handed rows, and those are what it stores.

        With OTel logs also taking audits, both get the same AuditRecord, so the log's id is
        the stored row's (tests/integration/otel/test_otel_logs.py checks that).
        """
        obs.configure(database=sqlite_url)
        (sink,) = dispatcher.sinks
        assert sink.render_alone is not None  # type: ignore[attr-defined]
        exported: list[Any] = []
        original = sink.export

        def spy(batch: Any) -> None:
            exported.extend(batch)
            original(batch)

        sink.export = spy  # type: ignore[method-assign]
        obs.record_audit("a.b", metadata={"n": 1})
        assert obs.flush(5.0)
        assert [type(item) for item in exported] == [tuple]
        (stored,) = obs.audit_log(create_engine(sqlite_url))
        assert stored.id.hex == exported[0][0] and stored.metadata == {"n": 1}


def queued(clock: Any, calls: list[tuple[str, Any]], source: Any) -> list[Any]:
    """Raw records of @audited calls, as a capture receives them; ids from source(0)."""
    obs.configure(database="sqlite://", clock=clock, id_factory=lambda ns: next(source(0)))
    raws: list[Any] = []
    dispatcher.capture = raws.append  # what testing.capture() installs: the raw records

    @obs.audited("doc.saved", resource=obs.Resource("doc", "{name}"), metadata={"v": "{value}"})
    def save(name: str, value: Any) -> None: ...

    try:
        with obs.scope(actor=obs.Actor.user("u_1", name="Ada"), organization="o_1"):
            for name, value in calls:
                save(name, value)
        return raws
    finally:
        dispatcher.capture = None


class Bomb:
    """A value that fails the test if anything serializes or measures it beyond its length."""

    def __str__(self) -> str:
        raise AssertionError("a value past the budget was serialized")

    def __repr__(self) -> str:
        raise AssertionError("a value past the budget was serialized")


def json_size(data: dict[str, Any]) -> int:
    return len(to_json(data).encode())


class TestBoundedMetadata:
    """max_metadata_bytes covers keys and nested values, and bounds the work, not only the size."""

    def test_a_huge_string_is_cut_with_the_bytes_it_lost(self) -> None:
        """12.8 MB of text: the record keeps a cut string whose marker counts every byte."""
        value = "é" * 6_400_000  # 12.8 MB of UTF-8
        cleaned, how = bound_mapping({"body": value, "n": 1}, 8192)
        assert json_size(cleaned) <= 8192
        assert cleaned["_truncated"] is True and cleaned["n"] == 1
        body = cleaned["body"]
        kept, _, tail = body.partition("…[truncated ")
        assert tail.endswith(" bytes]")
        assert len(kept.encode()) + int(tail.split()[0]) == len(value.encode())
        assert how is not None and how.truncated and not how.sanitized

    def test_keys_count_and_a_huge_key_is_cut_and_withheld(self) -> None:
        """A key longer than MAX_KEY_CHARS is cut, and its value (not judged) is withheld."""
        key = "k" * 100_000
        cleaned, _ = bound_mapping({key: "secret?", "ok": "fine"}, 8192)
        (long_key,) = (k for k in cleaned if k.startswith("kkk"))
        assert len(long_key) < 300 and long_key.endswith(f"…[truncated {100_000 - 256} bytes]")
        assert cleaned[long_key] == "[REDACTED]"
        assert cleaned["ok"] == "fine" and cleaned["_truncated"] is True

    def test_the_walk_stops_at_the_budget(self) -> None:
        """Keys past the budget are dropped unseen: a million keys cost what a few hundred do."""
        data: dict[str, Any] = {f"k{i}": "v" * 100 for i in range(1_000_000)}
        data["zz_last"] = Bomb()
        cleaned, how = bound_mapping(data, 8192)
        assert json_size(cleaned) <= 8192
        assert cleaned["_truncated"] is True
        assert "zz_last" not in cleaned
        assert how is not None and how.truncated

    def test_small_plain_metadata_is_returned_as_it_is(self) -> None:
        """The common case costs one pass and no copy."""
        data = {"file_id": "f_1", "bytes": 2048, "ratio": 0.5, "ok": True, "none": None}
        cleaned, how = bound_mapping(data, 8192)
        assert cleaned is data
        assert how is None  # nothing was done

    def test_values_no_database_stores_are_replaced(self) -> None:
        """NaN, infinities, NUL and lone surrogates, at any depth and in keys."""
        data = {"a\x00": [float("nan"), {"b": float("-inf"), "c": "x\ud800"}], "d": b"\x00\xff"}
        cleaned, how = bound_mapping(data, 8192)
        assert cleaned == {
            "a\ufffd": ["NaN", {"b": "-Infinity", "c": "x\ufffd"}],
            "d": "\ufffd\ufffd",
        }
        assert how is not None and how.sanitized and not how.truncated
        json.loads(to_json(cleaned))  # strict JSON: no NaN

    def test_a_recorded_huge_value_is_bounded_in_the_record(self) -> None:
        """Through record_audit: the captured record's metadata fits max_metadata_bytes."""
        obs.configure("sqlite://", max_metadata_bytes=1024)
        with capture() as cap:
            obs.record_audit("big", metadata={"body": "x" * 12_800_000, "kind": "upload"})
        (record,) = cap.audits
        assert json_size(record["metadata"]) <= 1024
        assert record["metadata"]["kind"] == "upload"
        assert record["metadata"]["_truncated"] is True


class TestRedactionOptions:
    """configure(keep_keys=..., redact=...) reach the records' metadata."""

    def test_keep_keys_and_the_redact_hook(self) -> None:
        """A kept key keeps its value; the hook's output is what is stored, sanitized."""

        def hook(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "added": float("nan")}

        obs.configure("sqlite://", keep_keys=["session_id"], redact=hook)
        with capture() as cap:
            obs.record_audit("a.b", metadata={"session_id": "s_1", "password": "hunter2"})
        (record,) = cap.audits
        assert record["metadata"] == {
            "session_id": "s_1",
            "password": "[REDACTED]",
            "added": "NaN",
        }
