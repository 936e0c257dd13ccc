"""The insert at commit writes the driver's row made straight from the raw record.

When a mirror sink (OTel logs) appears during the commit, the stored record it is handed is
made back from that row: the same AuditRecord that rendering the raw record gives.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from obs_sdk._delivery._sinks import _postgres_row_of, _sqlite_row_of
from obs_sdk._hotpath._records import AuditRecord, render_audit
from obs_sdk._ledger._tx import _record_of_row
from tests.unit.test_rendering import queued

VALUES = ["plain", 7, {"nested": [1, "two", None]}, "naïve ünïcode", 2.5, True]


@pytest.mark.parametrize("row_of", [_sqlite_row_of, _postgres_row_of], ids=["sqlite", "postgres"])
def test_the_record_made_back_from_the_row_is_the_rendered_record(row_of: Any) -> None:
    clock = iter(range(1_767_225_600_000_000_000, 1_767_225_700_000_000_000, 123_456_789))
    ids: list[Any] = []
    raws = queued(
        lambda: next(clock), [(f"n{i}", v) for i, v in enumerate(VALUES)], ids.__getitem__
    )
    ids[:] = [iter(uuid.UUID(int=n) for n in range(1, 10**6))]
    expected = [render_audit(raw) for raw in raws]
    ids[:] = [iter(uuid.UUID(int=n) for n in range(1, 10**6))]
    made = [_record_of_row(row_of(raw)) for raw in raws]
    assert made == expected
    assert all(type(r) is AuditRecord for r in made)
    assert made[0].occurred_at.utcoffset() is not None
