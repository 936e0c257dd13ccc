"""Work that rides on the caller's transaction: held to commit, dropped on rollback.

Success records made while a scope's session is in a transaction are inserted from the
session's ``before_commit`` event inside a Core savepoint: a failed insert rolls back to the
savepoint (the caller's commit still succeeds) and the record is queued after the commit
instead. Analytics events and ``after_commit`` callbacks wait for the commit.

How the transaction ends decides the fate of what it held: a commit writes it; an explicit
``rollback()`` (or a failed commit) drops it, counted ``rolled_back``; a close without
commit keeps it when the transaction wrote nothing (a read needs no commit) and drops it
otherwise. Records of child tasks and threads join the same transaction; one made after it
ended is written on its own, counted ``late``. obs_sdk never begins, flushes, expires or
refreshes the caller's session: a record made before its transaction began waits for it,
and is queued when the scope ends with none begun.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from obs_sdk import _context
from obs_sdk._context import Unit, suppressed
from obs_sdk._dispatch import dispatcher
from obs_sdk._guard import count, count_error
from obs_sdk._records import (
    AUDIT,
    SPEC,
    STORED,
    AuditRecord,
    IdCollision,
    RawRecord,
    render_audit,
    uuid7,
)
from obs_sdk._tables import insert_ignoring_duplicates, tables

__all__ = ["after_commit", "hold", "mark_written", "release_idle", "sync_session"]

logger = logging.getLogger("obs_sdk")

_KEY = "obs_sdk.pending"
_WROTE = "obs_sdk.wrote"  # the transaction in progress changed something
_ROLLED_BACK = "obs_sdk.rolled_back"  # ...and was rolled back, not merely closed
table_prefix = "obs_"  # set by configure()
_INSERT_ATTEMPTS = 5  # new ids for records whose id was taken, before giving up on them
_READS = ("select", "with", "show", "explain", "values", "pragma")


class _Pending:
    """What one transaction of a session holds. Children on other threads add to it too."""

    __slots__ = ("audits", "callbacks", "lock", "queued", "stored")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.audits: list[RawRecord] = []  # inserted at before_commit
        self.stored: list[AuditRecord] = []  # what that insert wrote: announced after commit
        self.queued: list[RawRecord] = []  # submitted after the commit
        self.callbacks: list[Callable[[], Any]] = []


def sync_session(session: Any) -> Session:
    """Return the ``Session`` whose events carry the transaction (AsyncSession → sync_session)."""
    return getattr(session, "sync_session", session)  # type: ignore[no-any-return]


def _pending(session: Session) -> _Pending:
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None:
        # setdefault: two threads holding at once must share one
        pending = session.info.setdefault(_KEY, _Pending())
    return pending


def hold(session: Session, unit: Unit | None, raw: RawRecord) -> None:
    """Keep *raw* for *session*'s transaction: the one in progress, or the next to begin.

    *unit* is the scope's unit of work: a record that finds no transaction after its scope
    closed was made too late to join one (a child that outlived its request): it is queued
    on its own and counted ``late``.
    """
    if unit is not None and unit.closed and not session.in_transaction():
        count("late")
        dispatcher.submit(raw)
        return
    pending = _pending(session)
    with pending.lock:
        if raw[SPEC].kind == AUDIT and dispatcher.capture is None:
            pending.audits.append(raw)
        else:
            pending.queued.append(raw)


def release_idle(session: Any) -> None:
    """At the end of a scope: queue what it held if no transaction began to carry it.

    A scope whose work ran no SQL in its session has no transaction to join, and a session
    closed without one fires no event: its records would wait forever.
    """
    session = sync_session(session)
    if session.in_transaction():
        return  # the transaction's end decides (commit, rollback, or close)
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None:
        return
    with pending.lock:
        held = [*pending.audits, *pending.queued]
        pending.audits, pending.queued = [], []
    for raw in held:
        dispatcher.submit(raw)


def mark_written(session: Any) -> None:
    """Note that *session*'s transaction changed data (obs_sdk's own metering and keys)."""
    sync_session(session).info[_WROTE] = True


def after_commit(session: Any, fn: Callable[[], Any]) -> None:
    """Run *fn* only once *session*'s transaction committed; a rollback drops it.

    Use it for irreversible side effects (deleting a blob) that must follow the accounting.
    Registered while no transaction is in progress, it waits for the next one's commit.
    *fn* runs on the committing thread; an error it raises is logged and counted, since the
    commit it follows already happened. Works for ``Session`` and ``AsyncSession``.
    """
    pending = _pending(sync_session(session))
    with pending.lock:
        pending.callbacks.append(fn)


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, flush_context: Any) -> None:
    session.info[_WROTE] = True  # a flush runs only when there were changes to send


@event.listens_for(Session, "do_orm_execute")
def _note_write(state: ORMExecuteState) -> None:
    if state.is_select or _reads(state):
        return
    state.session.info[_WROTE] = True


def _reads(state: ORMExecuteState) -> bool:
    """A statement that only reads: a SELECT, or a textual one that starts like a read."""
    if state.is_insert or state.is_update or state.is_delete:
        return False
    text = getattr(state.statement, "text", None)
    return isinstance(text, str) and text.lstrip()[:8].lower().startswith(_READS)


@event.listens_for(Session, "after_rollback")
def _note_rollback(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info[_ROLLED_BACK] = True


@event.listens_for(Session, "before_commit")
def _insert_held_audits(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT released (SQLAlchemy fires commit events for it): not the commit
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None or not pending.audits:
        return
    with pending.lock:
        held, pending.audits = pending.audits, []
    with suppressed():
        try:
            records = [render_audit(raw) for raw in held]
        except Exception as exc:
            count_error("render", exc)
            pending.queued.extend(held)
            return
        try:
            conn = session.connection()
            _begin_sqlite(conn)
            statement = insert_ignoring_duplicates(tables(table_prefix).audit, conn.dialect.name)
            with conn.begin_nested():
                pending.stored.extend(_insert_all(conn, statement, records))
        except Exception as exc:
            # The savepoint rolled back; the caller's commit goes on and the records take
            # the queue after it (they keep their resolved values, and get new ids).
            count_error("transaction_insert", exc)
            pending.queued.extend(held)


def _insert_all(conn: Any, statement: Any, records: list[AuditRecord]) -> list[AuditRecord]:
    """Insert *records*; one whose id is taken is written under a new id (logged, counted).

    ``ON CONFLICT DO NOTHING`` would skip it silently: ``RETURNING id`` says which rows were
    written. Returns the records as stored.
    """
    if not conn.dialect.insert_executemany_returning:  # no way to tell: as before
        conn.execute(statement, [r.as_dict() for r in records])
        return records
    returning = statement.returning(statement.table.c.id)
    stored: list[AuditRecord] = []
    todo = records
    for _ in range(_INSERT_ATTEMPTS):
        written = set(conn.execute(returning, [r.as_dict() for r in todo]).scalars())
        stored += [r for r in todo if r.id in written]
        todo = [_with_new_id(r) for r in todo if r.id not in written]
        if not todo:
            break
    return stored


def _with_new_id(record: AuditRecord) -> AuditRecord:
    replaced = record._replace(id=uuid7.replacing(record.id))
    count_error("transaction_insert", IdCollision(record.id, replaced.id))
    return replaced


def _begin_sqlite(conn: Any) -> None:
    # SQLite's default driver mode sends BEGIN only before the caller's first DML: a
    # SAVEPOINT sent first would open the transaction itself and its RELEASE would commit
    # the records on their own, before the caller's flush (which may still fail and roll
    # back). Begin the real transaction first, as the driver would have.
    if conn.dialect.name != "sqlite":
        return
    driver = conn.connection.driver_connection
    if getattr(driver, "in_transaction", True) is False:
        conn.exec_driver_sql("BEGIN")


@event.listens_for(Session, "after_commit")
def _release_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT released: the transaction can still roll back
    _forget_transaction(session)
    pending: _Pending | None = session.info.pop(_KEY, None)
    if pending is None:
        return
    with pending.lock:  # closed to children from here: what comes later is late
        late = pending.audits
    if late:  # children's records that arrived during the commit, after the insert
        count("late", len(late))
    for raw in (*pending.queued, *late):
        dispatcher.submit(raw)
    for record in pending.stored:  # already in the database: for the other sinks and stats()
        dispatcher.submit((STORED, record))
    for fn in pending.callbacks:
        try:
            fn()
        except Exception as exc:
            logger.exception("obs_sdk after_commit callback %r failed after the commit", fn)
            count_error("after_commit", exc)


@event.listens_for(Session, "after_transaction_end")
def _end_without_commit(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint or subtransaction: the root transaction goes on
    rolled_back, wrote = _forget_transaction(session)
    pending: _Pending | None = session.info.pop(_KEY, None)
    if pending is None:
        return
    with pending.lock:
        held = [*pending.audits, *pending.queued]
    if rolled_back or wrote:
        if held:
            count("rolled_back", len(held))
        return
    # Closed without commit, having written nothing: there is nothing its records depend on
    # (a download in a GET). after_commit callbacks wait for a commit that never came.
    for raw in held:
        dispatcher.submit(raw)


def _forget_transaction(session: Session) -> tuple[bool, bool]:
    """Clear what was noted about the transaction that ended: (rolled back, wrote)."""
    info = session.info
    return bool(info.pop(_ROLLED_BACK, False)), bool(info.pop(_WROTE, False))


_context.on_unit_close = release_idle
