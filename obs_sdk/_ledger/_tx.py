"""Work that rides on the caller's transaction: held to commit, dropped on rollback.

Success records made while a scope's session is in a transaction are inserted from the
session's ``before_commit`` event, with one driver-level statement that leaves the caller's
transaction as it was when it fails (see ``_insert``): the caller's commit still succeeds and
the record is queued after the commit instead. Analytics events and ``after_commit``
callbacks wait for the commit.

How the transaction ends decides the fate of what it held: a commit writes it; an explicit
``rollback()`` or a failed commit drops it, counted ``rolled_back`` (records the failed
commit had already inserted included); a close without commit keeps it when the transaction
wrote nothing (a read needs no commit) and drops it otherwise. A rolled-back savepoint drops
the records made inside it. "Wrote" is seen on the connection: any INSERT, UPDATE, DELETE,
MERGE or DDL statement it runs (ORM flush, Core on ``session.connection()``, text, a ``WITH``
around DML), and, at the scope's end, changes the session holds unflushed.

Records of child tasks and threads join the same transaction; one made after it ended is
written on its own, counted ``late``; the scope's own records made during the commit (by a
flush listener) wait for the next transaction instead. When the scope ends, a transaction
that has written nothing yet cannot drop its records meaningfully: they are written then,
so a session never closed loses nothing. obs_sdk never begins, flushes, expires or
refreshes the caller's session: a record made before its transaction began waits for it,
and is queued when the scope ends with none begun.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._delivery._sinks import as_uuid, driver_insert, replacement_id
from obs_sdk._guard import count, count_error, warn_once
from obs_sdk._hotpath._records import (
    AUDIT,
    SPEC,
    STORED,
    AuditRecord,
    IdCollision,
    RawRecord,
    render_audit,
    uuid7,
)
from obs_sdk._ledger._tables import insert_ignoring_duplicates, tables
from obs_sdk._scope import _context
from obs_sdk._scope._context import Unit, suppressed

if TYPE_CHECKING:
    from obs_sdk._delivery._sinks import RunsDriverSQL, _DriverInsert

__all__ = ["after_commit", "hold", "mark_written", "sync_session"]

logger = logging.getLogger("obs_sdk")

_KEY = "obs_sdk.pending"  # what the transaction in progress (or the next one) holds
_MARKS = "obs_sdk.marks"  # what was noted about the transaction in progress
_COMMITTED = "obs_sdk.committed"  # the root transaction whose commit was handled
_SCOPED = "obs_sdk.scoped"  # a scope opened a unit of work on this session
_INSERT_ATTEMPTS = 5  # new ids for records whose id was taken, before giving up on them
_SHOWN_IDS = 5  # record ids named in a log line, at most
_SAVEPOINT = "obs_sdk_commit_insert"  # around the insert at commit, on PostgreSQL

# A statement that writes: its first word, or a WITH whose body holds DML (PostgreSQL's
# data-modifying CTEs, SQLite's WITH … INSERT). Leading comments and parentheses skipped.
_FIRST_WORD = re.compile(r"(?:\s|\(|--[^\n]*|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)
_DML = re.compile(r"\b(?:insert|update|delete|merge)\b", re.IGNORECASE)
_WRITES = frozenset(
    {
        *("insert", "update", "delete", "merge", "upsert", "replace"),  # DML
        *("create", "alter", "drop", "truncate", "grant", "revoke", "comment"),  # DDL
        *("call", "do"),  # procedures and anonymous blocks: assumed to write
    }
)

# What the insert at commit writes for one held record: the driver's row made straight from
# the raw record (see _row_builder), or the AuditRecord. Both in column order: [0] is the id
# (the row's as 32 hex digits), [2] the action.
_Rendered = tuple[Any, ...]

# A held record, with the unit of work it was made in and the savepoint in progress then.
_Held = tuple[RawRecord, Unit | None, SessionTransaction | None]


class _Pending:
    """What one transaction of a session holds. Children on other threads add to it too.

    ``closed`` is set under the lock when the transaction's end took the holder: a child
    that looked it up just before then holds its record elsewhere (see ``hold``).
    """

    __slots__ = ("audits", "callbacks", "closed", "lock", "queued", "stored")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.audits: list[_Held] = []  # inserted at before_commit
        self.stored: list[_Rendered] = []  # what that insert wrote: announced after commit
        self.queued: list[_Held] = []  # submitted after the commit
        self.callbacks: list[Callable[[], Any]] = []


class _Marks:
    """What was noted about one root transaction: it wrote; it was rolled back."""

    __slots__ = ("rolled_back", "wrote")

    def __init__(self) -> None:
        self.wrote = False
        self.rolled_back = False


# The connection a transaction runs on → its marks. Weak: a session's connection lives as
# long as its transaction. Engines whose statements are watched, each once.
_links: weakref.WeakKeyDictionary[Connection, _Marks] = weakref.WeakKeyDictionary()
_watched: weakref.WeakSet[Engine] = weakref.WeakSet()
_watch_lock = threading.Lock()


def sync_session(session: Any) -> Session:
    """Return the ``Session`` whose events carry the transaction (AsyncSession → sync_session)."""
    return getattr(session, "sync_session", session)  # type: ignore[no-any-return]


def _pending(session: Session) -> _Pending:
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None:
        # setdefault: two threads holding at once must share one
        pending = session.info.setdefault(_KEY, _Pending())
    return pending


def _marks(session: Session) -> _Marks:
    marks: _Marks | None = session.info.get(_MARKS)
    if marks is None:
        marks = session.info.setdefault(_MARKS, _Marks())
    return marks


def hold(session: Session, unit: Unit | None, raw: RawRecord) -> None:
    """Keep *raw* for *session*'s transaction: the one in progress, or the next to begin.

    *unit* is the scope's unit of work. Once its scope ended, only the transaction in
    progress then may take its records: one made after that transaction ended (a child
    that outlived its request), or when another transaction of the session (the next
    request of a reused session) is in progress, is queued on its own and counted ``late``.
    """
    savepoint = session.get_nested_transaction()
    while True:
        if unit is not None and unit.closed:
            transaction = session.get_transaction()
            if transaction is None or transaction is not unit.transaction:
                _late(raw)
                return
        pending = _pending(session)
        with pending.lock:
            if not pending.closed:
                if raw[SPEC].kind == AUDIT and dispatcher.capture is None:
                    pending.audits.append((raw, unit, savepoint))
                else:
                    pending.queued.append((raw, unit, savepoint))
                return
        # The transaction ended between the lookup and the lock: its holder is gone.
        if unit is not None and unit.closed:
            _late(raw)
            return
        # The scope goes on: the next transaction takes the record (loop: a fresh holder).


def _late(raw: RawRecord) -> None:
    count("late")
    dispatcher.submit(raw)


def close_unit(session: Any, unit: Unit) -> None:
    """At the end of the scope that opened *unit*: settle what its session holds.

    No transaction in progress: nothing can carry the records, so they are queued; the
    ``after_commit`` callbacks, which no commit can follow, are dropped (counted, warned
    once). A transaction that has written nothing so far (and holds no unflushed changes)
    has nothing its records depend on: they are queued now, so a session never closed
    loses nothing. Otherwise the transaction's end decides.
    """
    session = sync_session(session)
    transaction = session.get_transaction()
    unit.transaction = transaction  # children's records may join this one only
    unit.closed = True
    if transaction is not None:
        marks = _marks(session)
        if marks.wrote or marks.rolled_back:
            return
        if session.new or session.dirty or session.deleted:
            marks.wrote = True  # its changes go with a close without commit
            return
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None:
        return
    with pending.lock:
        held = [*pending.audits, *pending.queued]
        pending.audits, pending.queued = [], []
        dropped = pending.callbacks if transaction is None else []
        if dropped:
            pending.callbacks = []
    for raw, _, _ in held:
        dispatcher.submit(raw)
    if dropped:
        _drop_callbacks(len(dropped))
        warn_once(
            "after_commit-idle",
            "obs_sdk: %d obs.after_commit() callback(s) were dropped: their scope ended with "
            "no transaction in progress on its session, so no commit can follow them (they "
            "would otherwise run at an unrelated later commit). Register them after the "
            "work that the commit makes durable, and commit inside the scope.",
            len(dropped),
        )


def after_commit(session: Any, fn: Callable[[], Any]) -> None:
    """Run *fn* only once *session*'s transaction committed; a rollback drops it.

    Use it for irreversible side effects (deleting a blob) that must follow the accounting.
    Registered while no transaction is in progress, it waits for the next one's commit;
    inside ``obs.scope(session=...)`` only while the scope lasts: a scope that ends with no
    transaction in progress drops it (counted ``after_commit_dropped``, warned once).
    A callback dropped by a rollback or a close without commit is counted too. *fn* runs on
    the committing thread; an error it raises is logged and counted, since the commit it
    follows already happened. Works for ``Session`` and ``AsyncSession``. Thread-safe.
    """
    session = sync_session(session)
    while True:
        pending = _pending(session)
        with pending.lock:
            if not pending.closed:
                pending.callbacks.append(fn)
                return


def _drop_callbacks(n: int) -> None:
    count("after_commit_dropped", n)


# -- what the transaction wrote: seen on its connection ------------------------------------


def mark_written(session: Session) -> None:
    """Note that *session*'s transaction changed data: obs_sdk's own metering statements.

    They run on ``session.connection()`` before the block's unit of work opens, so the
    connection may not be watched yet; the block's records must still go with a close
    without commit.
    """
    _marks(session).wrote = True


def open_unit(session: Any) -> None:
    """A scope opened a unit of work on *session*: watch its transactions' connections."""
    sync_session(session).info[_SCOPED] = True


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, flush_context: Any) -> None:
    _marks(session).wrote = True  # a flush runs only when there were changes to send


@event.listens_for(Session, "do_orm_execute")
def _note_execute(state: ORMExecuteState) -> None:
    """A write through ``session.execute()``, in any session (before a scope opened too)."""
    if state.is_select:
        return  # a CTE that writes inside one is seen on the connection (scoped sessions)
    if state.is_insert or state.is_update or state.is_delete:
        _marks(state.session).wrote = True
        return
    text = getattr(state.statement, "text", None)
    if isinstance(text, str) and writes(text):
        _marks(state.session).wrote = True


@event.listens_for(Session, "after_begin")
def _link_connection(session: Session, transaction: Any, connection: Connection) -> None:
    """Watch the statements of the connection a scoped session's transaction runs on.

    This sees what the session's own events cannot: Core statements on
    ``session.connection()``, and DML inside a CTE. Only sessions that a scope used: the
    engine's event hooks cost every statement on it a few microseconds.
    """
    if not session.info.get(_SCOPED):
        return
    _links[connection] = _marks(session)
    engine = connection.engine
    if engine not in _watched:
        with _watch_lock:
            if engine not in _watched:
                event.listen(engine, "after_cursor_execute", _note_statement)
                _watched.add(engine)


def _note_statement(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    marks = _links.get(conn)
    if marks is not None and not marks.wrote and writes(statement):
        marks.wrote = True


def writes(statement: str) -> bool:
    """Return True for a statement that changes data or schema (see _WRITES, _DML)."""
    match = _FIRST_WORD.match(statement)
    if match is None:
        return False
    word = match.group(1).lower()
    if word == "with":
        return _DML.search(statement, match.end()) is not None
    return word in _WRITES


@event.listens_for(Session, "after_rollback")
def _note_rollback(session: Session) -> None:
    if not session.in_nested_transaction():
        _marks(session).rolled_back = True


@event.listens_for(Session, "after_soft_rollback")
def _drop_savepoint(session: Session, previous_transaction: SessionTransaction) -> None:
    """A rolled-back savepoint takes the records made inside it (and inside its children)."""
    if not previous_transaction.nested:
        return
    pending: _Pending | None = session.info.get(_KEY)
    if pending is None:
        return
    with pending.lock:
        kept_audits = [h for h in pending.audits if not _inside(h[2], previous_transaction)]
        kept_queued = [h for h in pending.queued if not _inside(h[2], previous_transaction)]
        dropped = len(pending.audits) + len(pending.queued) - len(kept_audits) - len(kept_queued)
        pending.audits, pending.queued = kept_audits, kept_queued
    if dropped:
        count("rolled_back", dropped)


def _inside(savepoint: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while savepoint is not None:
        if savepoint is ended:
            return True
        savepoint = savepoint.parent
    return False


# -- the commit ---------------------------------------------------------------------------


class CommitInsertFailed(Exception):
    """What is logged when the insert at commit failed: actions, ids and counts only.

    The database error itself may quote the rows (SQL parameters: personal data), so it
    is named by type and never logged.
    """

    def __init__(self, records: list[_Rendered], error: BaseException) -> None:
        actions = sorted({r[2] for r in records})
        ids = ", ".join(str(as_uuid(r[0])) for r in records[:_SHOWN_IDS])
        more = f" and {len(records) - _SHOWN_IDS} more" if len(records) > _SHOWN_IDS else ""
        super().__init__(
            f"{len(records)} audit record(s) could not be inserted in the caller's transaction "
            f"({type(error).__module__}.{type(error).__name__}); they are queued instead. "
            f"Actions: {', '.join(actions)}; ids: {ids}{more}"
        )


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
            render = _row_builder(session) or render_audit
            records = [render(raw) for raw, _, _ in held]
        except Exception as exc:
            count_error("render", exc)
            pending.queued.extend(held)
            return
        stored: dict[int, _Rendered] = {}  # position in held → the record as written
        try:
            _insert(session.connection(), records, stored)
        except Exception as exc:
            # Nothing of the failed statement was written (see _insert): the caller's
            # commit goes on, and the records it did not write take the queue after it
            # (they keep their resolved values, and get new ids).
            count_error("transaction_insert", CommitInsertFailed(records, exc))
            pending.queued.extend(h for i, h in enumerate(held) if i not in stored)
        pending.stored.extend(stored.values())


def _row_builder(session: Session) -> Callable[[RawRecord], _Rendered] | None:
    """The driver's row builder for raw records at commit; None when records are needed.

    The row made straight from the raw record skips a UUID, a datetime and the record,
    each made only to be taken apart again (as the SQL sink's ``render_alone`` does). The
    record is needed only where something else takes it: a mirror sink (OTel logs) that
    receives the stored record, or a database without the driver-level insert.
    """
    if dispatcher.mirrored:
        return None
    try:
        dialect = session.get_bind().dialect
    except Exception:  # the insert's session.connection() meets it, and handles it
        return None
    if not dialect.insert_returning:
        return None
    from obs_sdk._config import current  # _config imports this module

    driver = driver_insert(tables(current().table_prefix).audit, dialect.name)
    return None if driver is None else driver.row_of


def _insert(conn: Connection, records: list[_Rendered], stored: dict[int, _Rendered]) -> None:
    """Insert *records* in the caller's transaction, noting in *stored* each one written.

    *records* are driver rows (see ``_row_builder``) or ``AuditRecord`` objects, all alike.

    One driver-level statement (the delivery sink's, see ``driver_insert``). A failed
    statement must leave the caller's transaction as it was: on SQLite each statement is
    atomic and an error leaves the transaction usable, so none is wrapped; on PostgreSQL
    an error aborts the whole transaction, so the insert runs in a savepoint (sent as
    driver SQL: SQLAlchemy's nested transaction cost more than the insert). On SQLite a
    failure after some statements (a batch of many rows, a new id) leaves their records
    in *stored*; on PostgreSQL the savepoint takes them back, so none are.
    """
    from obs_sdk._config import current  # _config imports this module

    table = tables(current().table_prefix).audit
    name = conn.dialect.name
    driver = driver_insert(table, name)
    if driver is None or not conn.dialect.insert_returning:  # other databases: as before
        _begin_sqlite(conn, before_savepoint=True)
        with conn.begin_nested():
            conn.execute(
                insert_ignoring_duplicates(table, name),
                [r.as_dict() for r in records],  # type: ignore[attr-defined]  # AuditRecords here
            )
        stored.update(enumerate(records))
        return
    if name == "sqlite":
        _begin_sqlite(conn, before_savepoint=False)
    run = _runner(conn)
    try:
        if name == "sqlite":
            _insert_rows(run, driver, records, stored)
            return
        # Not released: the commit that follows releases it, and a RELEASE would cost
        # another round trip (the caller's final flush runs inside it, and any failure of
        # that flush rolls the whole transaction back, as it would have).
        inside: dict[int, _Rendered] = {}
        run.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}", ())
        try:
            _insert_rows(run, driver, records, inside)
        except BaseException:
            run.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", ())
            raise
        stored.update(inside)
    finally:
        if isinstance(run, _DriverCursor):
            run.close()


class _DriverCursor:
    """The driver's own cursor, running the insert at commit where SQLAlchemy's would.

    ``Connection.exec_driver_sql`` costs as much again as SQLite's own insert of the record
    (an execution context, a result object, the statement events), about 0.1x of the
    call it follows. Taken only when nothing could tell the difference (see ``_runner``):
    then the same statement goes to the same driver connection, in the same transaction.
    A driver error comes out as the driver raised it, not wrapped in SQLAlchemy's
    ``DBAPIError``: the insert at commit handles any error alike (see
    ``_insert_held_audits``), and the caller's own next statement meets a broken
    connection through SQLAlchemy, which then invalidates it as usual.
    """

    __slots__ = ("_cursor",)

    def __init__(self, conn: Connection) -> None:
        self._cursor = conn.connection.cursor()

    def exec_driver_sql(self, statement: str, parameters: Any, /) -> Any:
        self._cursor.execute(statement, parameters)
        return self._cursor

    def close(self) -> None:
        self._cursor.close()


def _runner(conn: Connection) -> Connection | _DriverCursor:
    """The driver's cursor when nothing watches SQLAlchemy run statements; else *conn*.

    Watching: SQL logging (``echo``, or the ``sqlalchemy.engine`` logger at INFO), or a
    listener of an event that ``exec_driver_sql`` fires (on the connection or its engine:
    ``before_execute``, ``after_execute``, ``before_cursor_execute``,
    ``after_cursor_execute``; on the dialect: ``do_execute``, ``handle_error``) other than
    obs_sdk's own ``_note_statement``: OTel's SQLAlchemy instrumentation, an app's query
    logger or timer see the insert as before. Checked at each commit, since listeners come
    and go; written out rather than looped over, as this runs on every commit.
    """
    if conn.engine.logger.isEnabledFor(logging.INFO):
        return conn
    events, dialect_events = conn.dispatch, conn.dialect.dispatch
    ours = 1 if conn.engine in _watched else 0  # _note_statement, once per engine
    if (
        events.before_execute
        or events.after_execute
        or events.before_cursor_execute
        or len(events.after_cursor_execute) > ours
        or dialect_events.do_execute
        or dialect_events.handle_error
    ):
        return conn
    return _DriverCursor(conn)


def _insert_rows(
    conn: RunsDriverSQL,
    driver: _DriverInsert,
    records: list[_Rendered],
    stored: dict[int, _Rendered],
) -> None:
    """Insert *records*; one whose id is taken is written under a new id (logged, counted).

    ``ON CONFLICT DO NOTHING`` would skip it silently: ``RETURNING id`` says which rows were
    written, with no error to roll back. A single row (a call's record: the usual commit)
    needs no ``RETURNING``: the statement's row count says whether it was written.
    """
    row: Callable[[Any], _Rendered] = driver.row if type(records[0]) is AuditRecord else _as_is
    if len(records) == 1:
        record = records[0]
        for _ in range(_INSERT_ATTEMPTS):
            if conn.exec_driver_sql(driver.sql, row(record)).rowcount == 1:
                stored[0] = record
                return
            record = _with_new_id(record)
        raise RuntimeError(f"no free audit record id after {_INSERT_ATTEMPTS} attempts")
    todo = list(enumerate(records))
    for _ in range(_INSERT_ATTEMPTS):
        rows = [row(r) for _, r in todo]
        returned: set[Any] = set()
        try:
            driver.insert_returning(conn, rows, returned)
        finally:
            # As UUIDs: PostgreSQL returns them so, where the row holds the id as hex digits.
            written = {as_uuid(i) for i in returned}
            stored.update(
                t for t, row in zip(todo, rows, strict=True) if as_uuid(row[0]) in written
            )
        todo = [
            (i, _with_new_id(r))
            for (i, r), row in zip(todo, rows, strict=True)
            if as_uuid(row[0]) not in written
        ]
        if not todo:
            return
    raise RuntimeError(f"no free audit record id after {_INSERT_ATTEMPTS} attempts")


def _as_is(row: _Rendered) -> _Rendered:
    return row


def _with_new_id(record: _Rendered) -> _Rendered:
    taken = record[0]
    if type(record) is AuditRecord:
        replaced: _Rendered = record._replace(id=uuid7.replacing(taken))
    else:  # a driver row: the id as 32 hex digits
        replaced = (replacement_id(taken), *record[1:])
    count_error("transaction_insert", IdCollision(as_uuid(taken), as_uuid(replaced[0])))
    return replaced


def _record_of_row(row: _Rendered) -> AuditRecord:
    """The AuditRecord a driver row (see ``_row_builder``) was made from."""
    occurred = datetime.datetime.fromisoformat(row[1])
    if occurred.tzinfo is None:  # SQLite's row: naive UTC
        occurred = occurred.replace(tzinfo=datetime.timezone.utc)
    changes = None if row[21] is None else json.loads(row[21])
    columns = (as_uuid(row[0]), occurred, *row[2:19], json.loads(row[19]), row[20], changes)
    return tuple.__new__(AuditRecord, columns)  # as render_audit makes it


def _begin_sqlite(conn: Any, *, before_savepoint: bool) -> None:
    # SQLite's default driver mode sends BEGIN only before DML: before the records' INSERT
    # when that comes before the caller's first, so the transaction holds both. A SAVEPOINT
    # sent first would open the transaction itself and its RELEASE would commit the records
    # on their own, before the caller's flush (which may still fail and roll back); so
    # would an INSERT on a driver in autocommit mode (isolation_level None). Then begin the
    # real transaction first, as the driver in its default mode would have.
    if conn.dialect.name != "sqlite":
        return
    driver = conn.connection.driver_connection
    if getattr(driver, "in_transaction", True) is False and (
        before_savepoint or driver.isolation_level is None
    ):
        conn.exec_driver_sql("BEGIN")


@event.listens_for(Session, "after_commit")
def _release_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT released: the transaction can still roll back
    info = session.info
    info.pop(_MARKS, None)
    # The transaction's end (after_transaction_end) follows: it must leave alone what is
    # held from now on, which belongs to the next transaction.
    info[_COMMITTED] = session.get_transaction()
    pending: _Pending | None = info.pop(_KEY, None)
    if pending is None:
        return
    with pending.lock:  # closed to children from here
        pending.closed = True
        during = pending.audits  # made during the commit, after the insert (a flush listener)
    for held in during:
        unit = held[1]
        if unit is not None and unit.closed:
            _late(held[0])  # its scope is over: this was its last transaction
        else:
            hold(session, unit, held[0])  # its scope goes on: the next transaction takes it
    for raw, _, _ in pending.queued:
        dispatcher.submit(raw)
    for written in pending.stored:  # already in the database: for the other sinks and stats()
        if type(written) is not AuditRecord and dispatcher.mirrored:
            # A mirror sink (OTel logs) configured during the commit: it takes records.
            dispatcher.submit((STORED, _record_of_row(written)))
        else:
            dispatcher.submit((STORED, written))
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
    info = session.info
    if info.pop(_COMMITTED, None) is transaction:
        return  # committed: handled by after_commit
    marks: _Marks = info.pop(_MARKS, None) or _Marks()
    pending: _Pending | None = info.pop(_KEY, None)
    if pending is None:
        return
    with pending.lock:
        pending.closed = True
        held = [*pending.audits, *pending.queued]
    if pending.callbacks:  # a commit that never came
        _drop_callbacks(len(pending.callbacks))
    if marks.rolled_back or marks.wrote:
        # What a failed commit had inserted already went with its rollback: counted too.
        dropped = len(held) + len(pending.stored)
        if dropped:
            count("rolled_back", dropped)
        return
    # Closed without commit, having written nothing: there is nothing its records depend on
    # (a download in a GET).
    for raw, _, _ in held:
        dispatcher.submit(raw)


_context.on_unit_open = open_unit
_context.on_unit_close = close_unit
