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
from obs_sdk._seals._hasher import LeafHasher
from obs_sdk._seals._leaf import has_personal, record_fields, row_reader, sealed_leaf_hash
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


class TestLeafHasher:
    """LeafHasher (the seal's and verify's fast path) == sealed_leaf_hash of the fields."""

    def write_odd_records(self, engine: sa.Engine) -> None:
        """Records that take every branch: personal or not, floats, Unicode, NULLs, odd forms."""
        with obs.scope(
            actor=obs.Actor.user("u_ü", name="Ådå Łovelace", email="ada@example.com"),
            organization="org_1",
            ip="203.0.113.5",
            user_agent="curl/8.5 {x} %s",
        ):
            obs.record_audit(
                "file.read",
                resource=obs.Resource("file", "f_%s {0}", name="100%"),  # not read as a template
                metadata={"i": 1, "tags": ["a", "b"], "z": {"y": None}},
            )
            obs.record_audit("file.float", metadata={"ratio": 0.1, "big": 1e21, "n": -0.0})
            obs.record_audit(
                "file.unicode",
                metadata={"ключ": "значение", "\U0001f600": 1, "\ue000": 2, "s": "\u2028 \x00"},
            )
        with obs.scope(actor=obs.Actor.user("u_2", email="only@example.com")):
            obs.record_audit("file.some_personal", resource=obs.Resource("file", "f_1"))
        obs.record_audit("system.tick")  # no scope: most columns NULL, no personal field
        assert obs.flush(timeout=30)
        if engine.dialect.name == "sqlite":
            # Forms the sinks never write but a database may hold: each must give the
            # reference's bytes, through the fast path or by handing the row over.
            updates = {
                "system.tick": "occurred_at = '2026-12-06 03:13:38'",  # no microseconds
                "file.read": 'metadata = \' {"b": 1, "a": [2]} \'',  # spaces around it
                # Escaped keys: U+1F600 sorts before U+E000 in UTF-16, after it by code point.
                "file.some_personal": 'changes = \'{"\\ud83d\\ude00": 1, "\\ue000": 2}\'',
            }
            for action, assignment in updates.items():
                execute(
                    engine, f"UPDATE obs_audit_log SET {assignment} WHERE action = :a", a=action
                )

    def test_same_hash_as_the_reference(self, engine: sa.Engine) -> None:
        """With and without a salt; a row it declines (None) is one the reference must write."""
        self.write_odd_records(engine)
        t = tables()
        columns = list(t.audit.columns)
        with engine.connect() as conn:
            rows = list(driver_rows(conn, sa.select(t.audit).order_by(t.audit.c.action)))
            fields_of = row_reader(conn.dialect, columns)
            hasher = LeafHasher(conn.dialect, columns)
        assert len(rows) == 5
        salt = bytes(range(32))
        hashed = 0
        for row in rows:
            with_salt = salt if has_personal(fields_of(row)) else None
            assert hasher.personal(row) == (with_salt is not None)
            expected = sealed_leaf_hash(fields_of(row), with_salt)
            got = hasher(row, with_salt)
            assert got in (None, expected), row
            hashed += got is not None
            if with_salt is not None:  # a personal field and no salt: verify must say why
                assert hasher(row, None) is None
        assert hashed == len(rows)
        # A value it does not write (a number where text belongs) is the reference's.
        odd = list(rows[-1])
        odd[[c.name for c in columns].index("action")] = 5
        assert hasher(tuple(odd), None) is None
        assert sealed_leaf_hash(fields_of(odd), None) != sealed_leaf_hash(fields_of(rows[-1]), None)
