"""The statements of storage metering, per (table prefix, dialect), built once.

Two tables: ``storage_usage (owner, bytes)`` holds each owner's counter and
``storage_objects (object_id, owner, bytes, charged_at)`` the ledger of charged objects.
The order in which a charge or a release runs these statements, which is what makes it
race-free, is in ``_storage_change``.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    String,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.expression import Executable

from obs_sdk._ledger._precompiled import Precompiled
from obs_sdk._ledger._tables import Tables, tables
from obs_sdk.exceptions import ConfigurationError

__all__ = ["StorageSql", "storage_sql"]


def _p(name: str) -> ColumnElement[Any]:
    # Typed: on PostgreSQL, SQLAlchemy renders "%(name)s::BIGINT", so the server never has
    # to guess the type of "$1 <= $2" (psycopg sends ints as int2/int4/int8 by value).
    return bindparam(name, type_=BigInteger)


_ZERO: ColumnElement[Any] = literal_column("0")


class StorageSql:
    """The statements of one (table prefix, dialect); parameters are bound by name."""

    def __init__(self, t: Tables, dialect: str) -> None:
        u, o = t.storage_usage, t.storage_objects
        greatest = func.greatest if dialect == "postgresql" else func.max
        owner, object_id = bindparam("who", type_=String), bindparam("oid", type_=String)
        self.dialect = dialect
        self.lock_new = (
            pg_insert(o)
            .values(object_id=object_id, owner=owner, bytes=_p("size"), charged_at=bindparam("now"))
            .on_conflict_do_nothing(index_elements=[o.c.object_id])
            .returning(o.c.object_id)
        )
        self.lock_old = (
            select(o.c.owner, o.c.bytes).where(o.c.object_id == object_id).with_for_update()
        )
        self.set_object = (
            update(o)
            .where(o.c.object_id == object_id)
            .values(owner=owner, bytes=_p("size"), charged_at=bindparam("now"))
        )
        upsert = sqlite_insert(o) if dialect == "sqlite" else pg_insert(o)
        upsert = upsert.values(
            object_id=object_id, owner=owner, bytes=_p("size"), charged_at=bindparam("now")
        )
        self.put_object = upsert.on_conflict_do_update(
            index_elements=[o.c.object_id],
            set_={
                "owner": upsert.excluded.owner,
                "bytes": upsert.excluded.bytes,
                "charged_at": upsert.excluded.charged_at,
            },
        )
        self.add_usage = (
            update(u)
            .where(u.c.owner == owner)
            .values(bytes=greatest(u.c.bytes + _p("delta"), _ZERO))
            .returning(u.c.bytes)
        )
        self.take_usage = (
            update(u)
            .where(u.c.owner == owner)
            .values(bytes=greatest(u.c.bytes - _p("delta"), _ZERO))
        )
        self.undo_usage = update(u).where(u.c.owner == owner).values(bytes=u.c.bytes - _p("delta"))
        self.delete_object = (
            delete(o)
            .where(o.c.object_id == object_id)
            .returning(o.c.owner, o.c.bytes, o.c.charged_at)
        )
        self.restore_object = insert(o)
        same_owner = (o.c.object_id == object_id) & (o.c.owner == owner)
        self.refusal = select(
            select(u.c.bytes).where(u.c.owner == owner).scalar_subquery(),
            select(o.c.bytes).where(same_owner).scalar_subquery(),
        )
        self.charge = {limited: self._charge(t, dialect, limited) for limited in (False, True)}
        self._precompiled: dict[int, Precompiled] = {}

    def run(self, conn: Connection, statement: Executable, params: dict[str, Any]) -> Any:
        """Execute one of these statements; on SQLite, through its form compiled once."""
        if self.dialect != "sqlite":
            return conn.execute(statement, params)
        precompiled = self._precompiled.get(id(statement))
        if precompiled is None:
            precompiled = Precompiled(statement, conn.dialect)
            self._precompiled[id(statement)] = precompiled
        return precompiled.run(conn, params)

    def lock_params(self, owner: str) -> dict[str, Any]:
        """Parameters of ``charge[False]`` that create *owner*'s counter row or lock it unchanged.

        A zero charge through the unconditional upsert (``reconcile_storage`` locks a
        counter this way before it recounts it).
        """
        if self.dialect == "postgresql":
            return {"who": owner, "growth": 0, "quota": None}
        return {"who": owner, "size": 0, "oid": "", "quota": None}

    @staticmethod
    def _charge(t: Tables, dialect: str, limited: bool) -> Executable:
        """The one conditional statement: ``used + growth <= quota``, new owners included."""
        u, o = t.storage_usage, t.storage_objects
        owner, object_id = bindparam("who", type_=String), bindparam("oid", type_=String)
        if dialect == "postgresql":
            # The ledger row is locked already, so the growth is known exactly.
            growth: ColumnElement[Any] = _p("growth")
            source = select(owner, func.greatest(growth, _ZERO))
        else:
            # SQLite: the growth is read from the ledger inside this statement, which holds
            # the write lock from its first step, so nothing can change it in between.
            same = (o.c.object_id == object_id) & (o.c.owner == owner)
            previous = select(o.c.bytes).where(same).scalar_subquery()
            g = select((_p("size") - func.coalesce(previous, _ZERO)).label("growth")).subquery("g")
            growth = g.c.growth
            source = select(owner, func.max(growth, _ZERO)).select_from(g)
        # SQLite needs a WHERE on INSERT ... SELECT ... ON CONFLICT (a parsing ambiguity).
        source = source.where(growth <= _p("quota") if limited else true())
        upsert = (sqlite_insert(u) if dialect == "sqlite" else pg_insert(u)).from_select(
            ["owner", "bytes"], source
        )
        if dialect == "postgresql":
            # Inside the savepoint, a shrink is applied here too (never below zero).
            statement = upsert.on_conflict_do_update(
                index_elements=[u.c.owner],
                set_={"bytes": func.greatest(u.c.bytes + growth, _ZERO)},
                where=((growth <= _ZERO) | (u.c.bytes + growth <= _p("quota")))
                if limited
                else None,
            )
            return statement.returning(u.c.bytes)
        # SQLite adds max(growth, 0) only: the exact amount a failing body must take back.
        # A re-charge that shrinks adds nothing here; the shrink runs inside the savepoint.
        added = upsert.excluded.bytes
        statement = upsert.on_conflict_do_update(
            index_elements=[u.c.owner],
            set_={"bytes": u.c.bytes + added},
            where=((added == _ZERO) | (u.c.bytes + added <= _p("quota"))) if limited else None,
        )
        # What the ledger held before: read by the same statement, under the same lock.
        prior = o.c.object_id == object_id
        return statement.returning(
            u.c.bytes,
            select(o.c.owner).where(prior).scalar_subquery(),
            select(o.c.bytes).where(prior).scalar_subquery(),
        )


@functools.cache
def storage_sql(prefix: str, dialect: str) -> StorageSql:
    """The metering statements for tables named with *prefix*, on *dialect*."""
    if dialect not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"metered_storage supports SQLite and PostgreSQL, not {dialect!r}: keep the obs_ "
            "storage tables in one of those databases"
        )
    return StorageSql(tables(prefix), dialect)
