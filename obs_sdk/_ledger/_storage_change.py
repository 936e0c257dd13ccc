"""StorageChange: one charge or release of one object, its statements in race-free order.

It runs on a sync Session, in the caller's transaction, so the accounting commits or rolls
back with the caller's own writes (SPEC "Storage metering"); an AsyncSession reaches it
through ``run_sync`` (``_session_block``). The order of statements is what makes it
race-free (the statements themselves are in ``_storage_sql``):

- **PostgreSQL.** ``SAVEPOINT`` first (psycopg has already sent BEGIN), then the ledger
  row is locked (inserted, or ``SELECT ... FOR UPDATE``) so concurrent charges of one
  object serialise, then one conditional upsert of the owner's counter. A quota refusal
  or a failing body rolls back to the savepoint.
- **SQLite.** pysqlite's default mode sends BEGIN only before a write, so a SAVEPOINT as
  the transaction's first statement would open (and its RELEASE commit) a transaction of
  its own. The charge therefore comes first: one conditional upsert of the counter that
  reads the ledger in the same statement. Being a write, it takes SQLite's write lock
  itself (waiting under the busy timeout) before it reads, so there is no read-then-upgrade
  deadlock and no "database is locked" posing as a quota outcome. The savepoint opens
  next; a failing body rolls back to it and the first statement is reversed exactly.
- **Release** (both): ``DELETE ... RETURNING`` first; only the returned row is
  subtracted, so a retried or concurrent duplicate delete finds nothing to subtract.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy import Connection
from sqlalchemy.orm import Session, SessionTransaction

from obs_sdk import _config
from obs_sdk._ledger._storage_sql import StorageSql, storage_sql
from obs_sdk._ledger._tx import mark_written
from obs_sdk.exceptions import QuotaExceeded

__all__ = ["StorageChange"]

# PostgreSQL: how often a charge retries when the ledger row it found vanished (released by a
# concurrent transaction) between its INSERT ... DO NOTHING and its SELECT ... FOR UPDATE.
_LOCK_ATTEMPTS = 5


def _savepoint(session: Session) -> SessionTransaction:
    nested = session.begin_nested()
    session.connection()  # the Session emits SAVEPOINT lazily; emit it now, at this point
    return nested


@dataclass(slots=True)
class StorageChange:
    """Charge *nbytes* of *object_id* to *owner* under *quota*, or release it; single use.

    ``start()`` runs the change and leaves a savepoint open; ``finish()`` releases it, or on
    failure rolls back to it and reverses what ran before it. For a release, *owner* and
    *nbytes* are read from the ledger. After ``start()``, ``metadata`` holds what the
    ``storage.charged`` / ``storage.released`` audit record says (None: nothing released).
    """

    object_id: str
    nbytes: int
    owner: str
    quota: int | None
    release: bool
    metadata: dict[str, Any] | None = field(default=None, init=False)
    _nested: SessionTransaction | None = field(default=None, init=False, repr=False)
    _undo: Callable[[Connection], object] | None = field(default=None, init=False, repr=False)

    def start(self, session: Session) -> None:
        """Run the charge or release in *session*'s transaction (raises QuotaExceeded)."""
        conn = session.connection()
        mark_written(session)  # accounting: what the block records goes with its rollback
        sql = storage_sql(_config.current().table_prefix, conn.dialect.name)
        if self.release:
            self._start_release(session, conn, sql)
        elif sql.dialect == "postgresql":
            self._start_charge_pg(session, conn, sql)
        else:
            self._start_charge_sqlite(session, conn, sql)

    def finish(self, session: Session, failed: bool) -> None:
        """Keep the change (release its savepoint), or undo it when the block *failed*."""
        if failed:
            self._fail(session)
            return
        nested, self._nested, self._undo = self._nested, None, None
        if nested is not None and nested.is_active:
            nested.commit()

    def _start_charge_pg(self, session: Session, conn: Connection, sql: StorageSql) -> None:
        self._nested = _savepoint(session)
        try:
            self._charge_pg(conn, sql)
        except BaseException:
            self._nested.rollback()
            raise

    def _charge_pg(self, conn: Connection, sql: StorageSql) -> None:
        owner, quota = self.owner, self.quota
        params: dict[str, Any] = {"oid": self.object_id, "who": owner, "size": self.nbytes}
        params["now"] = datetime.datetime.now(datetime.timezone.utc)
        previous: tuple[str, int] | None = None
        for _ in range(_LOCK_ATTEMPTS):
            if conn.execute(sql.lock_new, params).first() is not None:
                break  # a new object: our row is in, and its unique key locks it
            row = conn.execute(sql.lock_old, params).first()
            if row is not None:
                previous = (row[0], row[1])
                break
        else:
            raise RuntimeError(f"could not lock ledger row {self.object_id!r}")
        growth = self.nbytes - (previous[1] if previous and previous[0] == owner else 0)
        moved = previous is not None and previous[0] != owner
        # Two counters change on a move: lock them in owner order, so two opposite moves
        # cannot deadlock.
        if moved and previous and previous[0] < owner:
            sql.run(conn, sql.take_usage, {"who": previous[0], "delta": previous[1]})
        charge = sql.charge[quota is not None]
        row = conn.execute(charge, {"who": owner, "growth": growth, "quota": quota}).first()
        if row is None:
            self._refuse(conn, sql, growth)
        usage = row[0]
        if moved and previous and previous[0] > owner:
            sql.run(conn, sql.take_usage, {"who": previous[0], "delta": previous[1]})
        if previous is not None:
            conn.execute(sql.set_object, params)
        self._charged(growth, usage)

    def _start_charge_sqlite(self, session: Session, conn: Connection, sql: StorageSql) -> None:
        owner, quota = self.owner, self.quota
        params = {"oid": self.object_id, "who": owner, "size": self.nbytes, "quota": quota}
        row = sql.run(conn, sql.charge[quota is not None], params).first()
        if row is None:
            used, same = sql.run(conn, sql.refusal, params).one()
            self._refuse(conn, sql, self.nbytes - (same or 0), used)
        usage, prior_owner, prior_bytes = row
        growth = self.nbytes - (prior_bytes if prior_owner == owner else 0)
        added = max(growth, 0)
        if added:
            self._undo = lambda c: sql.run(c, sql.undo_usage, {"who": owner, "delta": added})
        try:
            self._nested = _savepoint(session)
            params["now"] = datetime.datetime.now(datetime.timezone.utc)
            sql.run(conn, sql.put_object, params)
            if growth < 0:
                usage = sql.run(conn, sql.add_usage, {"who": owner, "delta": growth}).scalar() or 0
            if prior_owner is not None and prior_owner != owner:
                sql.run(conn, sql.take_usage, {"who": prior_owner, "delta": prior_bytes})
        except BaseException:
            self._fail(session)
            raise
        self._charged(growth, usage)

    def _refuse(
        self, conn: Connection, sql: StorageSql, growth: int, used: int | None = None
    ) -> NoReturn:
        if used is None:
            used = sql.run(conn, sql.refusal, {"who": self.owner, "oid": ""}).scalar()
        assert self.quota is not None
        raise QuotaExceeded(owner=self.owner, used=used or 0, limit=self.quota, requested=growth)

    def _charged(self, growth: int, usage: int) -> None:
        self.metadata = {"bytes": self.nbytes, "growth": growth, "owner": self.owner}
        self.metadata["usage"] = usage

    def _start_release(self, session: Session, conn: Connection, sql: StorageSql) -> None:
        # DELETE first on both databases: on SQLite it is the write that begins the
        # transaction (so the savepoint after it cannot escape); on PostgreSQL its row lock
        # makes a concurrent duplicate wait, then find nothing.
        row = conn.execute(sql.delete_object, {"oid": self.object_id}).first()
        if row is None:
            return  # never charged, or released already: nothing to give back
        owner, nbytes, charged_at = row
        self.owner = owner
        restored = {"object_id": self.object_id, "owner": owner}
        restored.update(bytes=nbytes, charged_at=charged_at)
        self._undo = lambda c: c.execute(sql.restore_object, restored)
        try:
            self._nested = _savepoint(session)
            usage = sql.run(conn, sql.add_usage, {"who": owner, "delta": -nbytes}).scalar()
        except BaseException:
            self._fail(session)
            raise
        self.metadata = {"bytes": nbytes, "owner": owner, "usage": usage or 0}

    def _fail(self, session: Session) -> None:
        """Undo this change in the caller's transaction (still ours to change)."""
        nested, undo = self._nested, self._undo
        self._nested = self._undo = None
        if nested is not None and nested.is_active:
            nested.rollback()
        if undo is not None and session.in_transaction():
            undo(session.connection())
