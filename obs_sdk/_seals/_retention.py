"""obs.purge_audit(): delete old audit records in batches, and keep the proof of the rest.

Retention deletes whole seals' records (seals 1..k, every one sealed before the cutoff,
so each record in them is older): the seals and their leaf hashes stay, so the chain and
every later record still verify. The purge is logged first, and the next seal signs how
far purges reach, so verify() reports the range as purged, not as deleted records.
"""

from __future__ import annotations

import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine

from obs_sdk._ledger._older_than import cutoff_from
from obs_sdk._seals._seal import ledger_engine, sealing

__all__ = ["purge_audit"]

_BATCH = 5_000
_UTC = datetime.timezone.utc


def purge_audit(
    bind: Engine | str | None = None, *, older_than: datetime.timedelta | datetime.datetime
) -> int:
    """Delete the sealed audit records older than *older_than*; return how many.

    *older_than* is an age (``timedelta``) or an aware cutoff ``datetime``. Records go
    seal by seal: those of every seal made before the cutoff, in batches of 5,000 (one
    transaction each, so writers are never held up long); unsealed records stay. Their
    salts go too. Runs under the sealer lock. Thread-safe.

    Raises:
        ConfigurationError: no database, a negative age or a naive datetime.
    """
    now = datetime.datetime.now(_UTC)
    cutoff = cutoff_from(older_than, "purge_audit", now)
    with ledger_engine(bind, "purge_audit()") as ledger, sealing(ledger) as conn:
        assert conn is not None  # a waiting lock is always acquired
        t = ledger.t
        through = conn.execute(
            select(func.max(t.seals.c.seq)).where(t.seals.c.sealed_at < cutoff)
        ).scalar()
        if not through:
            conn.rollback()
            return 0
        # Logged before anything is deleted: a purge cut short is still a purge.
        purge_id = conn.execute(
            insert(t.seal_purges)
            .values(through_seal=through, cutoff=cutoff, purged_at=now, records=0)
            .returning(t.seal_purges.c.id)
        ).scalar_one()
        conn.commit()
        audit, leaves = t.audit, t.seal_leaves
        total = 0
        while True:
            ids = (
                conn.execute(
                    select(audit.c.id)
                    .join(leaves, leaves.c.record_id == audit.c.id)
                    .where(leaves.c.seal_seq <= through)
                    .limit(_BATCH)
                )
                .scalars()
                .all()
            )
            if not ids:
                break
            conn.execute(audit.delete().where(audit.c.id.in_(ids)))
            conn.execute(update(leaves).where(leaves.c.record_id.in_(ids)).values(salt=None))
            total += len(ids)
            conn.execute(
                update(t.seal_purges).where(t.seal_purges.c.id == purge_id).values(records=total)
            )
            conn.commit()
    return total
