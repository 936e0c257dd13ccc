"""storage_usage() and reconcile_storage(): read the counters, check them against the ledger.

``storage_usage`` counters are what quotas are checked against; ``storage_objects`` rows
are what was charged. They agree by construction (``_storage_change``); reconciliation is
the audit that proves it, and the repair after a hand-made change to either table.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Connection, bindparam, func, literal, select, union_all, update
from sqlalchemy.orm import Session

from obs_sdk import _config
from obs_sdk._ledger._storage_owner import owner_text
from obs_sdk._ledger._storage_sql import storage_sql
from obs_sdk._ledger._tables import tables
from obs_sdk._scope._values import Actor
from obs_sdk.exceptions import ConfigurationError

__all__ = ["StorageDrift", "reconcile_storage", "storage_usage"]


@dataclass(frozen=True, slots=True)
class StorageDrift:
    """One owner whose counter disagrees with its ledger. Immutable.

    Attributes:
        owner: whose counter it is.
        counted: the bytes in ``storage_usage`` (0 when the owner has no counter row).
        ledger: the sum of the owner's rows in ``storage_objects``.
    """

    owner: str
    counted: int
    ledger: int


def _read_usage(conn: Connection, owner: str) -> int:
    u = tables(_config.current().table_prefix).storage_usage
    value = conn.execute(select(u.c.bytes).where(u.c.owner == owner)).scalar()
    return int(value or 0)


def storage_usage(owner: Actor | str, session: Session | None = None) -> int:
    """Return the bytes currently charged to *owner*.

    Reads inside *session* when given (seeing its uncommitted charges), otherwise in a
    short transaction of its own on the configured database. Thread-safe. For an
    ``AsyncSession`` call ``await session.run_sync(lambda s: obs.storage_usage(owner, s))``.
    """
    name = owner_text(owner, "storage_usage(owner)")
    if session is not None:
        if hasattr(session, "run_sync"):
            raise ConfigurationError(
                "storage_usage() takes a sync Session; with an AsyncSession use "
                "`await session.run_sync(lambda s: obs.storage_usage(owner, s))`"
            )
        return _read_usage(session.connection(), name)
    engine = _config.current().engine
    if engine is None:
        raise ConfigurationError(
            "storage_usage() without a session reads the configured database: call "
            "obs.configure(database=...) first, or pass session="
        )
    with engine.connect() as conn:
        return _read_usage(conn, name)


def reconcile_storage(session: Session, *, repair: bool = False) -> list[StorageDrift]:
    """Compare each owner's counter with the sum of its ledger rows; return the drifts.

    With ``repair=True`` each drifted counter is set to its ledger sum in *session*'s
    transaction (commit it to keep the repair). The repair locks the counter row first and
    sums the ledger in the next statement, so charges and releases running concurrently
    stay counted. Sync ``Session`` only (``AsyncSession``: use ``run_sync``).
    """
    t = tables(_config.current().table_prefix)
    u, o = t.storage_usage, t.storage_objects
    both = union_all(
        select(u.c.owner, u.c.bytes.label("counted"), literal(0, BigInteger).label("ledger")),
        select(o.c.owner, literal(0, BigInteger), o.c.bytes),
    ).subquery("both")
    counted, ledger = func.sum(both.c.counted), func.sum(both.c.ledger)
    query = (
        select(both.c.owner, counted, ledger)
        .group_by(both.c.owner)
        .having(counted != ledger)
        .order_by(both.c.owner)
    )
    conn = session.connection()
    drifts = [StorageDrift(r[0], int(r[1]), int(r[2])) for r in conn.execute(query)]
    if repair and drifts:
        sql = storage_sql(_config.current().table_prefix, conn.dialect.name)
        total = select(func.coalesce(func.sum(o.c.bytes), 0)).where(o.c.owner == u.c.owner)
        recount = (
            update(u).where(u.c.owner == bindparam("who")).values(bytes=total.scalar_subquery())
        )
        for drift in drifts:
            # Lock (or create) the counter row first; the sum then reads in a statement of
            # its own, after any transaction that had changed this counter committed.
            conn.execute(sql.charge[False], sql.lock_params(drift.owner))
            conn.execute(recount, {"who": drift.owner})
    return drifts
