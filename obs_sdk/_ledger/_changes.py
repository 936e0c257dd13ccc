"""What a call wrote: the rows an ``@audited(..., changes=...)`` call inserted, updated, deleted.

Read from SQLAlchemy's own attribute history, never by a query: at each flush during the call
(the session's ``after_flush`` event, where the history still shows what the flush sent) and,
when the call returns, from what is still pending. Only the call's own changes: what the
session held unflushed when the call began is its baseline, so a field changed earlier by
other code, and not changed again by the call, is left out, and one it changed again shows
the value it had when the call began. Core DML through the session
(``session.execute(update(...))``) has no history to diff: it is reported as
``{"op": "bulk", "table": ..., "rows": <row count>}``.

Calls made without ``changes=`` pay nothing: their wrappers are the usual ones, and the
session events here are listened to only once a ``changes=`` decoration exists; for a
session with no such call in progress they cost one dict lookup.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Column, event
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import get_state_history, instance_state
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE

from obs_sdk._delivery import _changes_render  # noqa: F401  (registers the renderer)
from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._delivery._sanitize import TRUNCATED
from obs_sdk._guard import count_error, warn_once
from obs_sdk._hotpath._emit import emit
from obs_sdk._hotpath._plain import freeze
from obs_sdk._hotpath._records import SUCCESS, Instrumentation, RawRecord
from obs_sdk._ledger._tx import hold, sync_session
from obs_sdk._scope._context import current_frame
from obs_sdk.exceptions import ConfigurationError

__all__ = ["NOT_LOADED", "begin", "check_changes", "emit_changes", "finish", "pending_changes"]

KEY = "obs_sdk.changes"  # session.info: the trackers of the calls in progress on the session
INSERT, UPDATE, DELETE, BULK = "insert", "update", "delete", "bulk"
# The old value of a field the call set without it ever having been loaded: SQLAlchemy does
# not load it to set it, and obs_sdk never queries. Not None: that would say "was empty".
NOT_LOADED = "[not loaded]"
_DML_WORDS = ("insert", "update", "delete")
# Rows diffed per call: past it, a bulk import under changes=True would spend its caller's
# time diffing rows that max_changes_bytes leaves out anyway; the rest are counted.
MAX_ROWS = 1000


def check_changes(value: object, where: str) -> bool | frozenset[str]:
    """Validate ``changes=``: False, True, or mapped class names (classes are taken too)."""
    if value is False or value is None:
        return False
    if value is True:
        _listen()
        return True
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{where}: changes= takes True, False or a tuple of mapped class names such as "
            f"('Document', 'Membership'), got {value!r}"
        )
    names = []
    for item in value:
        name = item.__name__ if isinstance(item, type) else item
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{where}: changes= names mapped classes by name, e.g. ('Document',); got {item!r}"
            )
        names.append(name)
    if not names:
        raise ConfigurationError(f"{where}: changes=() names no class; pass True for every class")
    _listen()
    return frozenset(names)


class _Mapped:
    """What is read of one mapper, once: its table, columns, primary key and class names."""

    __slots__ = ("columns", "names", "pk_keys", "pk_names", "table")

    def __init__(self, mapper: Any) -> None:
        self.table = getattr(mapper.local_table, "name", None) or str(mapper.local_table)
        # Columns of a table only: a column_property over an expression is never written.
        self.columns = tuple(
            (prop.key, prop.columns[0].name)
            for prop in mapper.column_attrs
            if isinstance(prop.columns[0], Column)
        )
        self.pk_names = tuple(column.name for column in mapper.primary_key)
        self.pk_keys = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        self.names = frozenset(m.class_.__name__ for m in mapper.iterate_to_root())


_mapped_cache: weakref.WeakKeyDictionary[Any, _Mapped] = weakref.WeakKeyDictionary()


def _mapped(mapper: Any) -> _Mapped:
    found = _mapped_cache.get(mapper)
    if found is None:
        found = _mapped_cache[mapper] = _Mapped(mapper)
    return found


def _old_and_new(state: Any, key: str) -> tuple[bool, Any, Any, bool]:
    """(changed, old, new, loaded) of one attribute, from its history; never loads it."""
    history = get_state_history(state, key, PASSIVE_NO_INITIALIZE)
    if history.added or history.deleted:
        new = history.added[0] if history.added else None
        if history.deleted:
            return True, history.deleted[0], new, True
        return True, NOT_LOADED, new, True
    if history.unchanged:
        return False, history.unchanged[0], history.unchanged[0], True
    return False, None, None, False


class _Tracker:
    """The changes of one call in progress: its baseline, then the rows it wrote, in order."""

    __slots__ = ("baseline", "names", "rows", "saved", "session", "skipped")

    def __init__(self, session: Session, names: frozenset[str] | None, baseline: bool) -> None:
        self.session = session
        self.names = names
        self.rows: dict[Any, list[Any]] = {}  # by InstanceState (bulk entries: a counter)
        self.skipped: set[Any] = set()  # the rows past MAX_ROWS: counted, not diffed
        # The rows as they were when each SAVEPOINT begun during the call began: its
        # rollback takes back what was flushed inside it, and so does this.
        self.saved: dict[Any, tuple[dict[Any, list[Any]], set[Any]]] = {}
        # What was pending when the call began: {state: (op, {attribute key: value then})}.
        self.baseline: dict[Any, tuple[str, dict[str, Any]]] = {}
        if not baseline:
            return
        for op, objects in (
            (INSERT, session.new),
            (UPDATE, session.dirty),
            (DELETE, session.deleted),
        ):
            for obj in objects:
                state = instance_state(obj)
                values = {}
                if op != DELETE:
                    touched = state.committed_state  # see _note
                    for key, _ in _mapped(state.mapper).columns:
                        if key in touched:
                            changed, _old, new, _loaded = _old_and_new(state, key)
                            if changed:
                                values[key] = freeze(new)
                self.baseline[state] = (op, values)

    def collect(self, session: Session) -> None:
        """Note what *session* holds to flush: at a flush (before it), or when the call returns."""
        for op, objects in (
            (INSERT, session.new),
            (UPDATE, session.dirty),
            (DELETE, session.deleted),
        ):
            for obj in objects:
                self._note(instance_state(obj), op)

    def _note(self, state: Any, op: str) -> None:
        mapped = _mapped(state.mapper)
        if self.names is not None and self.names.isdisjoint(mapped.names):
            return
        if len(self.rows) >= MAX_ROWS and state not in self.rows:
            self.baseline.pop(state, None)
            self.skipped.add(state)
            return
        # A flush resets the history: from there on it is relative to what was flushed.
        base_op, base = self.baseline.pop(state, (None, None))
        if base_op == DELETE:
            return  # deleted before the call began: not the call's doing
        if base_op == INSERT and op == INSERT:
            op = UPDATE  # added before the call: only what the call changed since counts
        fields: dict[str, list[Any]] = {}
        if op == INSERT:
            # Every value the row holds: after its flush, the defaults and generated keys too.
            for key, name in mapped.columns:
                value = state.dict.get(key)
                if value is not None:
                    fields[name] = [None, freeze(value)]
            self._merge(state, [op, mapped, self._pk(state, mapped), fields])
            return
        # An attribute set since the row was loaded or last flushed has its value then in
        # committed_state (NO_VALUE when it was not loaded): the others have no change to
        # read, and a table's other columns cost no history lookup. A delete shows them all.
        touched = state.committed_state if op != DELETE else None
        for key, name in mapped.columns:
            if touched is not None and key not in touched and (base is None or key not in base):
                continue
            changed, old, new, loaded = _old_and_new(state, key)
            if base is not None and key in base:
                old = base[key]
                if not changed:  # set back during the call to what is stored
                    changed = loaded
            elif base_op == INSERT:
                old = None  # a row added before the call: a field it had not set was empty
            if op == DELETE:
                if loaded:
                    fields[name] = [freeze(old), None]
                continue
            if not changed:
                continue
            old, new = freeze(old), freeze(new)
            if old != new:
                fields[name] = [old, new]
        self._merge(state, [op, mapped, self._pk(state, mapped), fields])

    @staticmethod
    def _pk(state: Any, mapped: _Mapped) -> tuple[Any, ...]:
        """The row's primary key, from its identity or (not yet flushed) its own values."""
        if state.key is not None:
            return tuple(freeze(v) for v in state.key[1])
        return tuple(freeze(state.dict.get(key)) for key in mapped.pk_keys)

    def _merge(self, state: Any, row: list[Any]) -> None:
        """Fold a later look at the same row (another flush, or the return) into the first."""
        before = self.rows.get(state)
        if before is None:
            self.rows[state] = row
            return
        op, fields = row[0], row[3]
        kept = before[3]
        if before[0] == INSERT and op == DELETE:
            del self.rows[state]  # made and removed by the call: nothing of it remains
            return
        if before[0] == INSERT:
            for name, (_, new) in fields.items():
                kept[name] = [None, new]
        elif before[0] == UPDATE and op == UPDATE:
            for name, (old, new) in fields.items():
                first = kept[name][0] if name in kept else old
                if first == new:
                    kept.pop(name, None)
                else:
                    kept[name] = [first, new]
        elif before[0] == UPDATE and op == DELETE:
            before[0] = DELETE
            before[3] = {
                name: [kept[name][0] if name in kept else old, None]
                for name, (old, _) in fields.items()
            }
        else:
            before[0], before[3] = op, fields
        if any(v is not None for v in row[2]):
            before[2] = row[2]

    def save(self, savepoint: Any) -> None:
        """A SAVEPOINT begins: keep a copy of the rows, to go back to if it rolls back."""
        rows = {
            k: [*row[:3], dict(row[3])] if row[0] != BULK else row for k, row in self.rows.items()
        }
        self.saved[savepoint] = (rows, set(self.skipped))

    def end(self, savepoint: Any, *, rolled_back: bool) -> None:
        """A SAVEPOINT ended: released, its rows stay; rolled back, they go."""
        saved = self.saved.pop(savepoint, None)
        if saved is not None and rolled_back:
            self.rows, self.skipped = saved

    def bulk(self, table: str | None, statement: str, rows: int | None) -> None:
        """Note a Core statement run through the session: its table and row count only."""
        self.rows[next(_bulk_ids)] = [BULK, table, statement, rows]

    def result(self) -> list[dict[str, Any]]:
        """The rows written, as plain data: ``{table, pk, op, fields}`` or a bulk entry."""
        out: list[dict[str, Any]] = []
        for row in self.rows.values():
            if row[0] == BULK:
                _, table, statement, count = row
                out.append({"table": table, "op": BULK, "statement": statement, "rows": count})
                continue
            op, mapped, pk, fields = row
            if op == UPDATE and not fields:
                continue
            out.append(
                {
                    "table": mapped.table,
                    "pk": dict(zip(mapped.pk_names, pk, strict=True)),
                    "op": op,
                    "fields": fields,
                }
            )
        if self.skipped:
            out.append({TRUNCATED: True, "omitted": len(self.skipped)})
        return out


_bulk_ids = itertools.count()


def begin(spec: Instrumentation, baseline: bool = True) -> _Tracker | None:
    """Start following the changes of a call (its wrapper calls this first). Never raises.

    None when there is nothing to follow: no scope session, or recording suppressed.
    Without *baseline*, everything pending counts as the call's.
    """
    try:
        frame = current_frame()
        if frame is not None and frame.suppressed:
            return None
        if frame is None or frame.session is None:
            _no_session(spec)
            return None
        session = sync_session(frame.session)
        names = None if spec.changes is True else spec.changes
        tracker = _Tracker(session, names, baseline)  # type: ignore[arg-type]
        trackers = session.info.get(KEY)
        if trackers is None:
            session.info[KEY] = [tracker]
        else:
            trackers.append(tracker)
        return tracker
    except Exception as exc:
        count_error("changes", exc)
        return None


def finish(tracker: _Tracker | None) -> list[dict[str, Any]] | None:
    """Stop following the call; return its changes (None without a tracker). Never raises."""
    if tracker is None:
        return None
    try:
        session = tracker.session
        trackers = session.info.get(KEY)
        if trackers is not None:
            trackers[:] = [t for t in trackers if t is not tracker]
            if not trackers:
                del session.info[KEY]
        tracker.collect(session)  # what is still pending: flushed later, or at commit
        return tracker.result()
    except Exception as exc:
        count_error("changes", exc)
        return None


def pending_changes(spec: Instrumentation) -> list[dict[str, Any]] | None:
    """``record_audit(changes=...)``: what the scope's session holds unflushed right now."""
    return finish(begin(spec, baseline=False))


def emit_changes(
    spec: Instrumentation,
    outcome: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    changes: list[dict[str, Any]] | None,
) -> None:
    """``emit()`` for a record carrying *changes*: held for the scope's transaction, or queued."""
    made: list[RawRecord] = []
    emit(spec, outcome, args, kwargs, result, None, made.append)
    if not made:
        return  # suppressed, emit_if said no, or an error emit() already counted
    try:
        raw = (*made[0], changes)
        frame = current_frame()
        if frame is not None and frame.session is not None and outcome == SUCCESS:
            hold(frame.session, frame.unit, raw)
        else:
            dispatcher.submit(raw)
    except Exception as exc:
        count_error("emit", exc)


def _no_session(spec: Instrumentation) -> None:
    warn_once(
        ("changes", spec.name),
        "obs_sdk: %r was recorded with changes= but no session in scope, so its changes "
        "are unknown (stored as null); open obs.scope(session=session) around the call.",
        spec.name,
    )


# -- Session events: registered once, by the first changes= decoration ------------------------

_listening = False
_listen_lock = threading.Lock()


def _listen() -> None:
    global _listening
    with _listen_lock:
        if not _listening:
            event.listen(Session, "after_flush", _after_flush)
            event.listen(Session, "do_orm_execute", _on_execute)
            event.listen(Session, "after_transaction_create", _on_savepoint)
            event.listen(Session, "after_commit", _on_release)
            event.listen(Session, "after_transaction_end", _on_savepoint_end)
            _listening = True


def _after_flush(session: Session, flush_context: Any) -> None:
    trackers = session.info.get(KEY)
    if not trackers:
        return
    try:
        for tracker in trackers:
            tracker.collect(session)
    except Exception as exc:  # never fail the caller's flush
        count_error("changes", exc)


def _on_savepoint(session: Session, transaction: Any) -> None:
    trackers = session.info.get(KEY)
    if trackers and transaction.nested:
        try:
            for tracker in trackers:
                tracker.save(transaction)
        except Exception as exc:
            count_error("changes", exc)


def _on_release(session: Session) -> None:
    # SQLAlchemy fires after_commit for a released SAVEPOINT too, while it is still current.
    trackers = session.info.get(KEY)
    if trackers and session.in_nested_transaction():
        savepoint = session.get_nested_transaction()
        for tracker in trackers:
            tracker.end(savepoint, rolled_back=False)


def _on_savepoint_end(session: Session, transaction: Any) -> None:
    # Released ones were forgotten at their after_commit: a SAVEPOINT still saved here ended
    # without a release, that is rolled back.
    trackers = session.info.get(KEY)
    if trackers and transaction.nested:
        for tracker in trackers:
            tracker.end(transaction, rolled_back=True)


def _on_execute(state: ORMExecuteState) -> Any:
    trackers = state.session.info.get(KEY)
    if not trackers:
        return None
    statement = _dml_kind(state)
    if statement is None:
        return None
    result = state.invoke_statement()  # run it here, to read its row count
    try:
        rows = getattr(result, "rowcount", None)
        if (rows is None or rows < 0) and isinstance(state.parameters, list):
            rows = len(state.parameters)  # an executemany whose driver did not count
        table = getattr(getattr(state.statement, "table", None), "name", None)
        names = {name for m in state.all_mappers for name in _mapped(m).names}
        for tracker in trackers:
            # A statement on a bare Table (or text) names no class: reported whatever the
            # filter, since obs_sdk cannot tell which class it belongs to without a lookup.
            if tracker.names is None or not names or not tracker.names.isdisjoint(names):
                tracker.bulk(table, statement, rows if rows is None or rows >= 0 else None)
    except Exception as exc:
        count_error("changes", exc)
    return result


def _dml_kind(state: ORMExecuteState) -> str | None:
    """Name a writing statement's kind (insert, update or delete; text too), else None."""
    if state.is_select:
        return None
    if state.is_insert:
        return INSERT
    if state.is_update:
        return UPDATE
    if state.is_delete:
        return DELETE
    text = getattr(state.statement, "text", None)
    if isinstance(text, str):
        word = text.lstrip()[:6].lower()
        if word in _DML_WORDS:
            return word
    return None
