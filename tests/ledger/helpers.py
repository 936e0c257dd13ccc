"""Builders for the ledger tests: keys, records, and direct SQL to tamper with."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._seals._signing import generate_key


def keypair() -> tuple[bytes, bytes]:
    """Return a fresh (private PEM, public PEM)."""
    return generate_key()


def write(n: int, *, organization: str = "org_1", actor: str = "u_1", start: int = 0) -> None:
    """Write *n* records for *actor* in *organization* and wait until they are stored."""
    with obs.scope(
        actor=obs.Actor.user(actor, name="Ada Lovelace", email=f"{actor}@example.com"),
        organization=organization,
        ip="203.0.113.5",
        user_agent="curl/8.5",
    ):
        for i in range(start, start + n):
            obs.record_audit("file.read", metadata={"i": i, "ratio": i / 4, "tags": ["a", "b"]})
    assert obs.flush(timeout=30)


def ids(engine: sa.Engine, organization: str | None = None) -> list[str]:
    """Return the audit record ids, oldest first (as text)."""
    query = "SELECT id FROM obs_audit_log"
    if organization:
        query += " WHERE organization_id = :org"
    with engine.connect() as conn:
        return sorted(
            str(uuid.UUID(str(r[0])))
            for r in conn.execute(sa.text(query + " ORDER BY id"), {"org": organization})
        )


def id_of(engine: sa.Engine, action: str) -> str:
    """Return the id of the one record of *action*."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT id FROM obs_audit_log WHERE action = :a"), {"a": action}
        )
        return str(uuid.UUID(str(found.scalar_one())))


def db_id(engine: sa.Engine, record_id: str) -> str:
    """Return the id as the database stores it (SQLite: 32 hex digits)."""
    return record_id.replace("-", "") if engine.dialect.name == "sqlite" else record_id


def execute(engine: sa.Engine, sql: str, **params: object) -> None:
    """Run one statement and commit (the attacker with write access)."""
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def sealing_writer(url: str, key: bytes, n: int, worker: int) -> None:
    """A writer process that also seals in the background (run with multiprocessing)."""
    obs.configure(url, handle_signals=False, seal_key=key, seal_every=0.05)
    write(n, actor=f"u_{worker}", organization=f"org_{worker % 2}")
    obs.shutdown(timeout=30)
