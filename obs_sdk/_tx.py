"""Work that rides on the caller's transaction: held to commit, dropped on rollback.

Success records made while a scope's session is in effect are inserted from the session's
``before_commit`` event inside a Core savepoint: a failed insert rolls back to the savepoint
(the caller's commit still succeeds) and the record is queued after the commit instead.
Analytics events and ``after_commit`` callbacks wait for the commit; rollback drops them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from obs_sdk._context import suppressed
from obs_sdk._dispatch import dispatcher
from obs_sdk._guard import count_error
from obs_sdk._records import AUDIT, SPEC, STORED, AuditRecord, RawRecord, render_audit
from obs_sdk._tables import insert_ignoring_duplicates, tables

__all__ = ["after_commit", "hold", "sync_session"]

logger = logging.getLogger("obs_sdk")

_KEY = "obs_sdk.pending"
table_prefix = "obs_"  # set by configure()


class _Pending:
    __slots__ = ("audits", "callbacks", "queued", "stored")

    def __init__(self) -> None:
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
        pending = session.info[_KEY] = _Pending()
    return pending


def hold(session: Session, raw: RawRecord) -> None:
    """Keep *raw* until *session* commits: audits are inserted in its transaction."""
    if not session.in_transaction():
        # Begin now (no I/O: the connection is acquired lazily) so that a rollback before any
        # SQL ran still ends this transaction and drops what it held.
        session.begin()
    pending = _pending(session)
    if raw[SPEC].kind == AUDIT and dispatcher.capture is None:
        pending.audits.append(raw)
    else:
        pending.queued.append(raw)


def after_commit(session: Any, fn: Callable[[], Any]) -> None:
    """Run *fn* only once *session*'s transaction committed; a rollback drops it.

    Use it for irreversible side effects (deleting a blob) that must follow the accounting.
    *fn* runs on the committing thread; an error it raises is logged and counted, since the
    commit it follows already happened. Works for ``Session`` and ``AsyncSession``.
    """
    session = sync_session(session)
    if not session.in_transaction():
        session.begin()
    _pending(session).callbacks.append(fn)


@event.listens_for(Session, "before_commit")
def _insert_held_audits(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT released (SQLAlchemy fires commit events for it): not the commit
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None or not pending.audits:
        return
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
                conn.execute(statement, [r.as_dict() for r in records])
            pending.stored.extend(records)
        except Exception as exc:
            # The savepoint rolled back; the caller's commit goes on and the records take
            # the queue after it (they keep their resolved values, and get new ids).
            count_error("transaction_insert", exc)
            pending.queued.extend(held)


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
    pending: _Pending | None = session.info.pop(_KEY, None)
    if pending is None:
        return
    for raw in pending.queued:
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
def _drop_on_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the root transaction ended without after_commit
        session.info.pop(_KEY, None)
