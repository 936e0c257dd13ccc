"""obs.erase_actor(): remove a person's data from the trail without breaking the seals.

A sealed record's personal fields entered its leaf as salted commitments. Erasure keeps
the commitments (in ``seal_leaves``), then deletes the values (NULL in the audit rows)
and the salts: the leaf still hashes to what was sealed, and without the salt nothing
can be learnt from a commitment. On a SQLite file the freed bytes are zeroed
(``secure_delete``) and the write-ahead log is checkpointed and truncated, so the values
are gone from the files, not just unreachable.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from obs_sdk._seals._leaf import PERSONAL, commitment, json_value
from obs_sdk._seals._seal import ledger_engine, sealing

__all__ = ["erase_actor"]

logger = logging.getLogger("obs_sdk")

_CHUNK = 500


def erase_actor(actor_id: str, bind: Engine | str | None = None) -> int:
    """Erase the personal fields (name, email, IP, user agent) of *actor_id*'s records.

    Returns how many records had personal fields erased. verify() still passes and
    reports those fields as erased; nothing else about the records changes. Runs under
    the sealer lock, so a seal never salts a value being erased. Thread-safe.

    On PostgreSQL the old row versions stay in the table files until VACUUM reclaims
    them (``VACUUM FULL`` to rewrite the files).

    Raises:
        ConfigurationError: no database.
    """
    with ledger_engine(bind, "erase_actor()") as ledger, sealing(ledger) as conn:
        assert conn is not None  # a waiting lock is always acquired
        t = ledger.t
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete = ON")
        audit, leaves = t.audit, t.seal_leaves
        personal = [audit.c[name] for name in PERSONAL]
        has_any = or_(*(column.is_not(None) for column in personal))
        rows = conn.execute(
            select(audit.c.id, leaves.c.salt, leaves.c.commitments, *personal)
            .select_from(audit.outerjoin(leaves, leaves.c.record_id == audit.c.id))
            .where(audit.c.actor_id == actor_id, has_any)
        ).all()
        for row in rows:
            _keep_commitments(conn, t.seal_leaves, row)
        ids = [row[0] for row in rows]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            conn.execute(
                update(audit).where(audit.c.id.in_(chunk)).values({name: None for name in PERSONAL})
            )
        conn.commit()
        if sqlite and conn.engine.url.database not in (None, "", ":memory:"):
            _scrub_sqlite(conn)
    return len(ids)


def _keep_commitments(conn: Connection, leaves: Any, row: Any) -> None:
    record_id, salt, stored, *values = row
    if salt is None:  # not sealed yet (no leaf to keep whole), or sealed without personal data
        return
    kept = dict(stored or {})
    for name, value in zip(PERSONAL, values, strict=True):
        if value is not None:
            kept[name] = commitment(salt, name, json_value(value))
    # The salt goes with the values: without it a commitment gives nothing away.
    conn.execute(
        update(leaves).where(leaves.c.record_id == record_id).values(commitments=kept, salt=None)
    )


def _scrub_sqlite(conn: Connection) -> None:
    # The old pages live on in the write-ahead log until a checkpoint copies the new ones
    # over them; TRUNCATE then empties the log file. VACUUM rewrites the database so that
    # no free page keeps an old copy.
    # VACUUM rewrites the whole file (time and space in proportion to its size) and needs
    # no other connection writing: if it cannot run now, erasure stands and we say so.
    try:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.commit()
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.commit()
    except OperationalError as exc:
        conn.rollback()
        logger.warning(
            "erase_actor: the values are erased, but VACUUM could not run (%s): old copies "
            "may remain in free pages of the file until `VACUUM` runs",
            exc,
        )
