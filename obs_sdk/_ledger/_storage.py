"""metered_storage(): a storage ledger with race-free quotas, atomic release, reconciliation.

Two tables: ``storage_usage (owner, bytes)`` holds each owner's counter and
``storage_objects (object_id, owner, bytes, charged_at)`` the ledger of charged objects.
Every change runs in the caller's transaction, so the accounting commits or rolls back
with the caller's own writes (SPEC "Storage metering").

The order of statements is what makes it race-free:

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
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    String,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.expression import Executable

from obs_sdk import _config
from obs_sdk._ledger._tables import Tables, tables
from obs_sdk._ledger._tx import mark_written
from obs_sdk._scope._context import current_scope, frame_with, in_repeated_key
from obs_sdk._scope._values import Actor, Resource
from obs_sdk.exceptions import ConfigurationError, QuotaExceeded

__all__ = ["StorageDrift", "metered_storage", "reconcile_storage", "storage_usage"]

# PostgreSQL: how often a charge retries when the ledger row it found vanished (released by a
# concurrent transaction) between its INSERT ... DO NOTHING and its SELECT ... FOR UPDATE.
_LOCK_ATTEMPTS = 5


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


def _p(name: str) -> ColumnElement[Any]:
    # Typed: on PostgreSQL, SQLAlchemy renders "%(name)s::BIGINT", so the server never has
    # to guess the type of "$1 <= $2" (psycopg sends ints as int2/int4/int8 by value).
    return bindparam(name, type_=BigInteger)


_ZERO: ColumnElement[Any] = literal_column("0")


class _Sql:
    """The statements of one (table prefix, dialect), built once."""

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
        self._prepared: dict[int, _Prepared] = {}

    def run(self, conn: Connection, statement: Executable, params: dict[str, Any]) -> Any:
        """Execute one of these statements; on SQLite, through its form compiled once."""
        if self.dialect != "sqlite":
            return conn.execute(statement, params)
        prepared = self._prepared.get(id(statement))
        if prepared is None:
            prepared = self._prepared[id(statement)] = _Prepared(statement, conn.dialect)
        return prepared.run(conn, params)

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


class _Prepared:
    """A statement compiled once, run with the driver's own parameter list.

    On SQLite a metered upload is a handful of small statements, and SQLAlchemy's work per
    execution (the compiled-cache key, bind processing by name) was a sixth of its cost.
    Bind processors still apply (the ledger's UTC timestamps); results come back as the
    driver returns them, so only statements returning plain ints and strings run here.
    """

    def __init__(self, statement: Executable, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        assert compiled.positiontup is not None, "a positional (qmark) driver"
        self.sql = compiled.string
        # Each parameter's processor as SQLAlchemy's own execution applies it: the type's
        # dialect implementation's bind_processor (None: the value goes as it is).
        self.binds = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        )

    def run(self, conn: Connection, params: dict[str, Any]) -> Any:
        values = tuple(
            params[name] if process is None else process(params[name])
            for name, process in self.binds
        )
        return conn.exec_driver_sql(self.sql, values)


@functools.cache
def _sql(prefix: str, dialect: str) -> _Sql:
    if dialect not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"metered_storage supports SQLite and PostgreSQL, not {dialect!r}: keep the obs_ "
            "storage tables in one of those databases"
        )
    return _Sql(tables(prefix), dialect)


def _check_bytes(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where} takes an int >= 0 (a size in bytes), got {value!r}")
    return value


def _owner_text(owner: object, where: str) -> str:
    if isinstance(owner, Actor):
        if owner.id is None:
            raise ConfigurationError(f"{where}: a {owner.type} actor has no id to own storage")
        return owner.id
    if not isinstance(owner, str) or not owner:
        raise ConfigurationError(f"{where} takes a non-empty string owner, got {owner!r}")
    return owner


def _resolve_owner(explicit: object) -> str:
    if explicit is not None:
        return _owner_text(explicit, "metered_storage(owner=...)")
    s = current_scope()
    if s.organization:
        return s.organization
    if s.actor is not None and s.actor.id:
        return s.actor.id
    raise ConfigurationError(
        "metered_storage() cannot tell whom to charge: open obs.scope(organization=...) or "
        "obs.scope(actor=obs.Actor.user(id)), or pass owner=..."
    )


def _resolve_quota(explicit: int | None, owner: str) -> int | None:
    if explicit is not None:
        return _check_bytes(explicit, "metered_storage(quota=...)")
    configured = _config.current().storage_quota
    if callable(configured):
        configured = configured(owner)
        if configured is None:
            return None
        return _check_bytes(configured, f"the storage_quota callable, for owner {owner!r},")
    return configured


def _savepoint(session: Session) -> SessionTransaction:
    nested = session.begin_nested()
    session.connection()  # the Session emits SAVEPOINT lazily; emit it now, at this point
    return nested


class _Meter:
    """One charge or release around a block (``with`` / ``async with``); single use."""

    def __init__(
        self,
        session: Any,
        object_id: str,
        nbytes: int | None,
        owner: str | Actor | None,
        quota: int | None,
        release: bool,
    ) -> None:
        if not isinstance(object_id, str) or not object_id:
            raise ConfigurationError(
                f"metered_storage(object_id=...) takes a non-empty string, got {object_id!r}"
            )
        if release:
            if nbytes is not None or quota is not None or owner is not None:
                raise ConfigurationError(
                    "metered_storage(release=True) takes only object_id: the bytes and owner "
                    "to give back are the ones recorded in the ledger"
                )
        else:
            nbytes = _check_bytes(nbytes, "metered_storage(bytes=...)")
            if quota is not None:
                _check_bytes(quota, "metered_storage(quota=...)")
        self._session = session
        self._object_id = object_id
        self._bytes = nbytes or 0
        self._explicit_owner = owner
        self._explicit_quota = quota
        self._release = release
        self._active = False
        self._owner = ""
        self._quota: int | None = None
        self._nested: SessionTransaction | None = None
        self._undo: Callable[[Connection], object] | None = None
        self._metadata: dict[str, Any] | None = None
        self._frame: AbstractContextManager[Any] | None = None

    # -- the SQL, on a sync Session (AsyncSession runs it through run_sync) ------------------

    def _start(self, session: Session) -> None:
        conn = session.connection()
        mark_written(session)  # accounting: what the block records goes with its rollback
        sql = _sql(_config.current().table_prefix, conn.dialect.name)
        if self._release:
            self._start_release(session, conn, sql)
        elif sql.dialect == "postgresql":
            self._start_charge_pg(session, conn, sql)
        else:
            self._start_charge_sqlite(session, conn, sql)

    def _start_charge_pg(self, session: Session, conn: Connection, sql: _Sql) -> None:
        self._nested = _savepoint(session)
        try:
            self._charge_pg(conn, sql)
        except BaseException:
            self._nested.rollback()
            raise

    def _charge_pg(self, conn: Connection, sql: _Sql) -> None:
        owner, quota = self._owner, self._quota
        params: dict[str, Any] = {"oid": self._object_id, "who": owner, "size": self._bytes}
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
            raise RuntimeError(f"could not lock ledger row {self._object_id!r}")
        growth = self._bytes - (previous[1] if previous and previous[0] == owner else 0)
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

    def _start_charge_sqlite(self, session: Session, conn: Connection, sql: _Sql) -> None:
        owner, quota = self._owner, self._quota
        params = {"oid": self._object_id, "who": owner, "size": self._bytes, "quota": quota}
        row = sql.run(conn, sql.charge[quota is not None], params).first()
        if row is None:
            used, same = sql.run(conn, sql.refusal, params).one()
            self._refuse(conn, sql, self._bytes - (same or 0), used)
        usage, prior_owner, prior_bytes = row
        growth = self._bytes - (prior_bytes if prior_owner == owner else 0)
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
        self, conn: Connection, sql: _Sql, growth: int, used: int | None = None
    ) -> NoReturn:
        if used is None:
            used = sql.run(conn, sql.refusal, {"who": self._owner, "oid": ""}).scalar()
        assert self._quota is not None
        raise QuotaExceeded(owner=self._owner, used=used or 0, limit=self._quota, requested=growth)

    def _charged(self, growth: int, usage: int) -> None:
        self._metadata = {"bytes": self._bytes, "growth": growth, "owner": self._owner}
        self._metadata["usage"] = usage

    def _start_release(self, session: Session, conn: Connection, sql: _Sql) -> None:
        # DELETE first on both databases: on SQLite it is the write that begins the
        # transaction (so the savepoint after it cannot escape); on PostgreSQL its row lock
        # makes a concurrent duplicate wait, then find nothing.
        row = conn.execute(sql.delete_object, {"oid": self._object_id}).first()
        if row is None:
            return  # never charged, or released already: nothing to give back
        owner, nbytes, charged_at = row
        self._owner = owner
        restored = {"object_id": self._object_id, "owner": owner}
        restored.update(bytes=nbytes, charged_at=charged_at)
        self._undo = lambda c: c.execute(sql.restore_object, restored)
        try:
            self._nested = _savepoint(session)
            usage = sql.run(conn, sql.add_usage, {"who": owner, "delta": -nbytes}).scalar()
        except BaseException:
            self._fail(session)
            raise
        self._metadata = {"bytes": nbytes, "owner": owner, "usage": usage or 0}

    def _fail(self, session: Session) -> None:
        """Undo this block's accounting in the caller's transaction (still ours to change)."""
        nested, undo = self._nested, self._undo
        self._nested = self._undo = None
        if nested is not None and nested.is_active:
            nested.rollback()
        if undo is not None and session.in_transaction():
            undo(session.connection())

    def _succeed(self) -> None:
        nested, self._nested, self._undo = self._nested, None, None
        if nested is not None and nested.is_active:
            nested.commit()

    def _finish(self, session: Session, failed: bool) -> None:
        if failed:
            self._fail(session)
        else:
            self._succeed()

    # -- the context-manager protocols -------------------------------------------------------

    def _prepare(self) -> bool:
        if self._active:
            raise ConfigurationError("a metered_storage(...) block cannot be entered twice")
        if in_repeated_key():
            # The key's first delivery made this charge. suppressed() is no reason to skip:
            # it silences records, and metering is accounting (a quota bypass otherwise).
            return False
        if not self._release:
            self._owner = _resolve_owner(self._explicit_owner)
            self._quota = _resolve_quota(self._explicit_quota, self._owner)
        return True

    def _open_frame(self, sync: Session) -> None:
        # Records made in the body (and ours) join the session's transaction.
        self._frame = frame_with(session=sync)
        self._frame.__enter__()
        self._active = True

    def _close(self, succeeded: bool) -> None:
        try:
            if succeeded and self._metadata is not None and _config.current().audit_storage:
                self._record()
        finally:
            self._active = False
            frame, self._frame = self._frame, None
            if frame is not None:
                frame.__exit__(None, None, None)

    def _record(self) -> None:
        from obs_sdk._hotpath._analytics import track
        from obs_sdk._hotpath._audit import record_audit

        assert self._metadata is not None
        verb = "released" if self._release else "charged"
        resource = Resource("storage_object", self._object_id)
        record_audit(f"storage.{verb}", resource=resource, metadata=self._metadata)
        # The owner's usage after the change, for analytics: a tracked event (held to the
        # commit like the audit record), grouped by the scope's workspace/organization.
        properties = {"object_id": self._object_id, **self._metadata}
        track(f"storage_{verb}", properties=properties)

    def __enter__(self) -> None:
        if hasattr(self._session, "run_sync"):
            raise ConfigurationError(
                "metered_storage() got an AsyncSession: use `async with obs.metered_storage(...)`"
            )
        if not self._prepare():
            return
        self._start(self._session)
        self._open_frame(self._session)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        succeeded = False
        try:
            self._finish(self._session, exc is not None)
            succeeded = exc is None
        finally:
            self._close(succeeded)

    async def __aenter__(self) -> None:
        if not self._prepare():
            return
        session = self._session
        if hasattr(session, "run_sync"):
            await session.run_sync(self._start)
            self._open_frame(session.sync_session)
        else:
            self._start(session)
            self._open_frame(session)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        session = self._session
        succeeded = False
        try:
            if hasattr(session, "run_sync"):
                await session.run_sync(self._finish, exc is not None)
            else:
                self._finish(session, exc is not None)
            succeeded = exc is None
        finally:
            self._close(succeeded)


def metered_storage(
    session: Any,
    *,
    object_id: str,
    bytes: int | None = None,
    owner: str | Actor | None = None,
    quota: int | None = None,
    release: bool = False,
) -> _Meter:
    """Charge stored bytes (or give them back) around a block, in *session*'s transaction.

    A charge runs before the block: one conditional statement checks ``used + growth <=
    quota`` (equality allowed; an owner's first charge included) and raises
    ``QuotaExceeded`` without running the block when it does not fit; the ledger records the
    object's size. Re-charging an object charges only its growth (a re-charge that does not
    grow always succeeds) and charging it under another owner moves it. The owner is
    *owner*, else the scope's organization, else the actor's id. The quota is *quota*, else
    ``configure(storage_quota=...)``, else unlimited.

    A release deletes the object's ledger row and subtracts what was charged for it from the
    owner recorded there, never below zero; an object never charged or already released
    changes nothing, so a retried or concurrent duplicate delete cannot double-decrement.

    If the block raises, its charge or release is undone (a savepoint), even when the caller
    swallows the error and commits; a rollback undoes everything. Inside the block the
    session is in scope, so audit records join its transaction. Inside ``obs.suppressed()``
    the charge and the quota check run all the same (only the ``audit_storage`` records are
    silenced); inside a repeated ``once()`` key nothing is metered, since the key's first
    delivery made the charge.

    Use ``with`` for a ``Session`` and ``async with`` for an ``AsyncSession``. Concurrent
    charges from threads or processes are race-free on SQLite and PostgreSQL; one object is
    for one block on one thread or task.

    Raises:
        QuotaExceeded: the charge does not fit the owner's quota; nothing was charged.
        ConfigurationError: a bad argument, or no owner could be resolved.
        sqlalchemy.exc.SQLAlchemyError: the metering SQL failed. It is accounting, part of
            the caller's transaction, so it is never swallowed.
    """
    return _Meter(session, object_id, bytes, owner, quota, release)


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
    name = _owner_text(owner, "storage_usage(owner)")
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
        sql = _sql(_config.current().table_prefix, conn.dialect.name)
        total = select(func.coalesce(func.sum(o.c.bytes), 0)).where(o.c.owner == u.c.owner)
        recount = (
            update(u).where(u.c.owner == bindparam("who")).values(bytes=total.scalar_subquery())
        )
        for drift in drifts:
            # Lock (or create) the counter row first; the sum then reads in a statement of
            # its own, after any transaction that had changed this counter committed.
            conn.execute(sql.charge[False], _lock_params(sql, drift.owner))
            conn.execute(recount, {"who": drift.owner})
    return drifts


def _lock_params(sql: _Sql, owner: str) -> dict[str, Any]:
    # A zero charge through the unconditional upsert: creates the row or locks it unchanged.
    if sql.dialect == "postgresql":
        return {"who": owner, "growth": 0, "quota": None}
    return {"who": owner, "size": 0, "oid": "", "quota": None}
