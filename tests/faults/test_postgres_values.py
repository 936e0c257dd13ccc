"""PostgreSQL keeps what SQLite keeps: values a database would refuse are sanitized, counted.

PostgreSQL refuses a VARCHAR(255) value of 300 characters, NaN and Infinity in JSONB, a NUL
character in text and JSON, and a lone surrogate (not UTF-8); SQLite refuses the last. Each
record carrying one is kept, with the value made storable, and counted in
``stats()["sanitized"]``; the stored record reads back the same on both databases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import obs_sdk as obs

pytestmark = pytest.mark.acceptance

HOSTILE_ACTOR = obs.Actor.user("u_1", name="N" * 300, email="ada@example.com")
HOSTILE_RESOURCE = obs.Resource("doc", "r" * 300, name="a\x00b\ud800c")
HOSTILE_METADATA = {
    "nan": math.nan,
    "inf": math.inf,
    "ninf": -math.inf,
    "nul": "x\x00y",
    "surrogate": "a\udc80b",
    "k\x00ey": 1,
    "nested": [{"deep": math.nan, "text": "\x00"}],
}


def cut(value: str, width: int) -> str:
    """What a value of *width*-limited column keeps: its start, then the marker."""
    removed = len(value) - width
    while True:
        marker = f"…[truncated {removed} chars]"
        keep = width - len(marker)
        if len(value) - keep == removed:
            return value[:keep] + marker
        removed = len(value) - keep


EXPECTED = {
    "actor_name": cut("N" * 300, 255),
    "resource_id": cut("r" * 300, 255),
    "resource_name": "a\ufffdb\ufffdc",
    "metadata": {
        "nan": "NaN",
        "inf": "Infinity",
        "ninf": "-Infinity",
        "nul": "x\ufffdy",
        "surrogate": "a\ufffdb",
        "k\ufffdey": 1,
        "nested": [{"deep": "NaN", "text": "\ufffd"}],
    },
}


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def stored(reader: sa.Engine) -> dict[str, dict[str, Any]]:
    """The stored records by action: only the columns this test looks at."""
    return {
        r.action: {
            "actor_name": r.actor_name,
            "resource_id": r.resource_id,
            "resource_name": r.resource_name,
            "metadata": r.metadata,
        }
        for r in obs.audit_log(reader)
    }


class TestHostileValues:
    """Every path that writes a record stores the same sanitized values, on both databases."""

    def test_queued_committed_and_immediate_records_are_kept(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Queued, transactional and record_audit_now records arrive, sanitized and counted."""
        obs.configure(database_url)
        with obs.scope(actor=HOSTILE_ACTOR):
            obs.record_audit("queued", resource=HOSTILE_RESOURCE, metadata=HOSTILE_METADATA)
            obs.record_audit_now("now", resource=HOSTILE_RESOURCE, metadata=HOSTILE_METADATA)
        with Session(reader) as session, obs.scope(actor=HOSTILE_ACTOR, session=session):
            session.execute(sa.text("SELECT 1"))
            obs.record_audit("committed", resource=HOSTILE_RESOURCE, metadata=HOSTILE_METADATA)
            session.commit()
        assert obs.flush()
        assert stored(reader) == {
            "queued": EXPECTED,
            "now": EXPECTED,
            "committed": EXPECTED,
        }
        stats = obs.stats()
        assert stats["sanitized"] == 3
        assert (stats["delivered"], stats["failed"], stats["dropped"]) == (3, 0, 0)

    def test_clean_records_are_not_counted(self, database_url: str, reader: sa.Engine) -> None:
        """Values every database stores (non-ASCII text included) are left alone."""
        obs.configure(database_url)
        with obs.scope(actor=obs.Actor.user("u_1", name="Zoë Ωmega", email="z@example.com")):
            obs.record_audit(
                "clean",
                resource=obs.Resource("doc", "r" * 255, name="☃ snow"),
                metadata={"pi": 3.14, "text": "naïve", "n": 2**62},
            )
        assert obs.flush()
        (record,) = obs.audit_log(reader)
        assert (record.actor_name, record.resource_id, record.resource_name) == (
            "Zoë Ωmega",
            "r" * 255,
            "☃ snow",
        )
        assert record.metadata == {"pi": 3.14, "text": "naïve", "n": 2**62}
        assert obs.stats()["sanitized"] == 0
