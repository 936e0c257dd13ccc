"""The ledger's fast paths read and store what the SQLAlchemy paths would.

Seal and verify read records at the driver level (no SQLAlchemy result processing) and
keep each record's salt in its leaf row; these tests pin both against the plain paths.
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._ledger._tables import tables
from obs_sdk._seals._erasure import erase_actor
from obs_sdk._seals._leaf import record_fields, row_reader
from obs_sdk._seals._retention import purge_audit
from obs_sdk._seals._seal import driver_rows, seal
from obs_sdk._seals._verify import verify
from tests.ledger.helpers import execute, write

Key = tuple[bytes, bytes]


def salted_actors(engine: sa.Engine) -> list[str]:
    """The actor of each sealed record whose leaf row still holds a salt."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT a.actor_id FROM obs_seal_leaves l "
                "JOIN obs_audit_log a ON a.id = l.record_id WHERE l.salt IS NOT NULL"
            )
        )
        return sorted(found.scalars())


class TestDriverRows:
    """row_reader() of a driver row == record_fields() of the SQLAlchemy row."""

    def test_same_fields_as_sqlalchemy(self, engine: sa.Engine) -> None:
        """Unicode, floats, nested JSON, NULLs, changes, and a time form the sinks never write."""
        with obs.scope(
            actor=obs.Actor.user("u_ü", name="Ådå Łovelace", email="ada@example.com"),
            organization="org_1",
            ip="203.0.113.5",
        ):
            obs.record_audit(
                "file.read",
                metadata={
                    "ratio": 0.1,
                    "big": 1e21,
                    "ключ": "значение",
                    "nested": {"b": [1, 2.5, None, True], "a": "\u2028 \x00"},
                },
            )
        obs.record_audit("system.tick")  # no scope: most columns NULL
        assert obs.flush(timeout=30)
        changes = '{"b": 1, "a": [0.5, "x"]}'
        if engine.dialect.name == "sqlite":
            execute(engine, "UPDATE obs_audit_log SET changes = :c", c=changes)
            # SQLAlchemy reads a time without microseconds too; the fast path must hand it over.
            execute(
                engine,
                "UPDATE obs_audit_log SET occurred_at = '2026-12-06 03:13:38' "
                "WHERE action = 'system.tick'",
            )
        else:
            execute(engine, "UPDATE obs_audit_log SET changes = CAST(:c AS JSONB)", c=changes)
        t = tables()
        query = sa.select(t.audit).order_by(t.audit.c.action)
        names = [str(c.name) for c in t.audit.columns]
        with engine.connect() as conn:
            expected = [record_fields(row, names) for row in conn.execute(query)]
            read = row_reader(conn.dialect, list(t.audit.columns))
            got = [read(row) for row in driver_rows(conn, query)]
        assert len(got) == 2
        assert got == expected
        assert got[1]["occurred_at"].endswith("+00:00")


class TestSaltInLeaf:
    """Each sealed record's salt lives in its leaf row, and goes with erasure and purges."""

    def test_erasure_takes_the_salt(self, engine: sa.Engine, key: Key) -> None:
        """Only the erased actor's salts are gone; the seals still verify."""
        write(3, actor="u_ada")
        write(2, actor="u_bob")
        seal(key=key[0])
        assert salted_actors(engine) == ["u_ada"] * 3 + ["u_bob"] * 2
        erase_actor("u_ada")
        assert salted_actors(engine) == ["u_bob"] * 2
        assert verify(public_key=key[1]).ok

    def test_purge_takes_the_salt(self, engine: sa.Engine, key: Key) -> None:
        """A purged record's salt goes with it; the leaf (its hash) stays."""
        write(4)
        seal(key=key[0])
        cutoff = datetime.datetime.now(datetime.timezone.utc)
        write(2, start=4)
        seal(key=key[0])
        assert purge_audit(older_than=cutoff) == 4
        with engine.connect() as conn:
            leaves = conn.execute(
                sa.text("SELECT count(*), count(salt) FROM obs_seal_leaves")
            ).one()
        assert tuple(leaves) == (6, 2)
        assert verify(public_key=key[1]).ok
