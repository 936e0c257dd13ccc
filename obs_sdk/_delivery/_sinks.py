"""Sinks deliver rendered records to one destination each: the SQL store and PostHog."""

from __future__ import annotations

import datetime
import functools
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from obs_sdk._delivery import _posthog_log
from obs_sdk._delivery._redact import to_json
from obs_sdk._guard import count_error
from obs_sdk._hotpath import _records
from obs_sdk._hotpath._records import (
    AUDIT,
    EVENT,
    GROUP,
    TIME_NS,
    AnalyticsEvent,
    AuditRecord,
    IdCollision,
    RawRecord,
    audit_columns,
    uuid7,
)
from obs_sdk._ledger._tables import Tables, insert_ignoring_duplicates

if TYPE_CHECKING:
    import posthog

__all__ = ["DatabaseSink", "PostHogSink", "Sink", "as_uuid", "driver_insert", "replacement_id"]

Record = Any  # AuditRecord | AnalyticsEvent


class Sink(Protocol):
    """**Protocol:** delivers rendered records to one destination.

    Called only from its own worker thread (one per sink), with instrumentation suppressed.
    ``export`` may raise; the dispatcher logs, counts and, when ``is_transient`` says the
    error may pass, retries with backoff. It returns the positions of the records its
    destination refused to take (a client whose own queue is full), counted as dropped, or
    None when it took them all. ``flush`` returns False when the destination still holds
    records it was handed (None: nothing to say). ``kinds`` names the record kinds it takes.
    A sink may also have ``render_alone(raw)``: while it is the only sink taking audits, the
    router hands it what that returns instead of an ``AuditRecord``.
    """

    name: str
    kinds: frozenset[str]

    def export(self, batch: Sequence[Record], /) -> Sequence[int] | None: ...
    def is_transient(self, error: Exception, /) -> bool: ...
    def flush(self, timeout: float, /) -> bool | None: ...
    def shutdown(self, timeout: float, /) -> None: ...
    def after_fork(self) -> None: ...


def _sqlite_row(r: AuditRecord) -> tuple[Any, ...]:
    # The forms SQLAlchemy's Uuid and DateTime types store on SQLite: 32 hex digits, and
    # naive UTC text with microseconds (UTCDateTime reads it back as aware UTC). Columns
    # 2..18 pass as they are.
    return (f"{r[0].int:032x}", _sqlite_time(r[1]), *r[2:19], to_json(r[19]), r[20], _json(r[21]))


def _json(changes: Any) -> str | None:
    """The changes column's stored form: JSON text, or NULL for a call made without them."""
    return None if changes is None else to_json(changes)


def _sqlite_time(moment: datetime.datetime) -> str:
    """``moment.isoformat(" ", "microseconds")`` without its (UTC) offset."""
    return moment.isoformat(" ", "microseconds")[:26]


_EPOCH = datetime.datetime(1970, 1, 1)
# The last second's stored text: records come in bursts within a second. One tuple, swapped
# whole, so threads never see half an update.
_last_prefix: tuple[int | None, str] = (None, "")


def _sqlite_row_of(raw: RawRecord) -> tuple[Any, ...]:
    """``_sqlite_row(render_audit(raw))``, without making the UUID, datetime and record."""
    record_id, moment = _id_and_time(raw)
    r = audit_columns(raw, record_id, moment)
    return (*r[:19], to_json(r[19]), r[20], _json(r[21]))


def _postgres_row_of(raw: RawRecord) -> tuple[Any, ...]:
    """``_postgres_row(render_audit(raw))`` in text PostgreSQL reads back as the same values.

    The id as 32 hex digits and the time as ISO text with its UTC offset: the server parses
    them into the uuid and timestamptz columns, and the UUID and datetime objects are never
    made (as on SQLite, a fifth of the render).
    """
    record_id, moment = _id_and_time(raw)
    r = audit_columns(raw, record_id, moment + "+00:00")
    return (*r[:19], to_json(r[19]), r[20], _json(r[21]))


def _id_and_time(raw: RawRecord) -> tuple[str, str]:
    """A new record id (32 hex digits) and the call's time (UTC, naive ISO text, µs)."""
    global _last_prefix
    time_ns = raw[TIME_NS]
    make_id = _records.config.id_factory  # configure() replaces the configuration object
    record_id = uuid7.hex(time_ns) if make_id is uuid7 else make_id(time_ns).hex
    seconds, micros = divmod(time_ns // 1000, 1_000_000)
    known, prefix = _last_prefix
    if seconds != known:
        prefix = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat(" ")
        _last_prefix = (seconds, prefix)
    return record_id, f"{prefix}.{micros:06d}"


def _postgres_row(r: AuditRecord) -> tuple[Any, ...]:
    return (*r[:19], to_json(r[19]), r[20], _json(r[21]))


def as_uuid(stored: Any) -> uuid.UUID:
    """A stored record id as a UUID (SQLite and driver rows hold it as 32 hex digits)."""
    return uuid.UUID(hex=stored) if isinstance(stored, str) else stored


def replacement_id(taken: Any) -> Any:
    """A new id in the stored form of *taken* (SQLite: 32 hex digits; PostgreSQL: a UUID)."""
    if isinstance(taken, str):
        return uuid7.replacing(uuid.UUID(hex=taken)).hex
    return uuid7.replacing(taken)


class RunsDriverSQL(Protocol):
    """Runs one driver-level statement: a ``Connection``, or the driver's cursor (``_tx``)."""

    def exec_driver_sql(self, statement: str, parameters: Any, /) -> Any: ...


class _DriverInsert:
    """The INSERT for the driver, one row or many at once, and the row builders matching it.

    ``row`` takes a rendered ``AuditRecord``; ``row_of`` a raw record, making neither the
    record nor its UUID and datetime (for writers that need nothing else).

    On SQLite, a batch goes in as one multi-row ``INSERT ... VALUES (...), (...)`` statement
    (up to ``MAX_ROWS_PER_STATEMENT`` rows and the driver's parameter limit), not 500: the
    driver releases and takes back the GIL around each statement step, and a busy caller
    thread takes it each time, so steps are what a worker pays under load. A statement is
    built once per row count.

    On PostgreSQL, a batch of fewer than ``UNNEST_FROM`` rows takes the driver's executemany (one
    pipeline: the least CPU per row); a larger one, which a sink that fell behind takes, goes
    as one ``INSERT ... SELECT * FROM unnest(<one array per column>)``: one round trip where
    the pipeline waits on its socket again and again, each wait a GIL hand-off that a busy
    caller thread stretches to milliseconds (measured: 4.6K rows/s against 18.8K).
    """

    def __init__(self, table: Table, dialect_name: str, max_params: int) -> None:
        columns = [c.name for c in table.columns]
        assert columns == list(AuditRecord._fields), "the row builders slice records by column"
        quoted = ", ".join(f'"{name}"' for name in columns)
        if dialect_name == "sqlite":
            values = ", ".join("?" for _ in columns)
            self.row: Callable[[AuditRecord], tuple[Any, ...]] = _sqlite_row
            self.row_of: Callable[[RawRecord], tuple[Any, ...]] = _sqlite_row_of
        else:
            values = ", ".join(
                "CAST(%s AS JSONB)" if c in ("metadata", "changes") else "%s" for c in columns
            )
            self.row = _postgres_row
            self.row_of = _postgres_row_of
        self._head = f'INSERT INTO "{table.name}" ({quoted}) VALUES '
        self._values = f"({values})"
        self.sql = f"{self._head}{self._values} ON CONFLICT (id) DO NOTHING"
        self._most = max(1, min(MAX_ROWS_PER_STATEMENT, max_params // len(columns)))
        self._by_size: dict[tuple[int, str], str] = {(1, ""): self.sql}
        # psycopg sends an executemany as one pipeline: a statement of thousands of
        # parameters costs it 4x the CPU per row (measured), so PostgreSQL takes executemany,
        # or one statement over arrays for large batches.
        self._multi_row = dialect_name == "sqlite"
        casts = [_ARRAY_CASTS.get(type(c.type).__name__, "text") for c in table.columns]
        arrays = ", ".join(f"CAST(%s AS {cast}[])" for cast in casts)
        self._unnest = (
            f'INSERT INTO "{table.name}" ({quoted}) SELECT * FROM unnest({arrays}) '
            "ON CONFLICT (id) DO NOTHING"
        )

    def _statement(self, rows: int, returning: str = "") -> str:
        sql = self._by_size.get((rows, returning))
        if sql is None:
            values = ", ".join([self._values] * rows)
            sql = f"{self._head}{values} ON CONFLICT (id) DO NOTHING{returning}"
            self._by_size[(rows, returning)] = sql
        return sql

    def insert(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        """Insert *rows* (in *conn*'s transaction); return how many were written."""
        if not self._multi_row:
            if len(rows) < UNNEST_FROM:
                return int(conn.exec_driver_sql(self.sql, rows).rowcount)
            columns = tuple(list(column) for column in zip(*rows, strict=True))
            return int(conn.exec_driver_sql(self._unnest, columns).rowcount)
        written = 0
        start, n = 0, len(rows)
        while start < n:
            size = min(self._most, n - start)
            params = tuple(chain.from_iterable(rows[start : start + size]))
            written += conn.exec_driver_sql(self._statement(size), params).rowcount
            start += size
        return written

    def insert_returning(
        self, conn: RunsDriverSQL, rows: list[tuple[Any, ...]], written: set[Any]
    ) -> None:
        """Insert *rows* as multi-row statements, adding to *written* the ids each wrote.

        For the insert at the caller's commit: ``RETURNING id`` names the rows written, so
        an id found taken (skipped by ``ON CONFLICT DO NOTHING``, no error) is known without
        a savepoint to roll back to. *written* grows statement by statement: when one
        fails, it holds what the ones before it wrote. Needs ``conn.dialect.insert_returning``.
        """
        start, n = 0, len(rows)
        while start < n:
            size = min(self._most, n - start)
            params = tuple(chain.from_iterable(rows[start : start + size]))
            result = conn.exec_driver_sql(self._statement(size, " RETURNING id"), params)
            written.update(row[0] for row in result.fetchall())
            start += size


@functools.cache
def driver_insert(table: Table, dialect_name: str) -> _DriverInsert | None:
    """The driver-level INSERT for *table* on *dialect_name* (None: other dialects).

    For connections other than a sink's own (the caller's, at its commit): the parameter
    limit is SQLite's smallest, which the driver of any version accepts.
    """
    if dialect_name == "sqlite":
        return _DriverInsert(table, dialect_name, _SQLITE_DEFAULT_MAX_PARAMS)
    if dialect_name == "postgresql":
        return _DriverInsert(table, dialect_name, _POSTGRES_MAX_PARAMS)
    return None


# Rows per INSERT statement: a batch of 500 takes one, of 5000 four (32766 parameters at most).
MAX_ROWS_PER_STATEMENT = 1560
UNNEST_FROM = 1000  # PostgreSQL: rows per batch from which one statement over arrays is sent
# The PostgreSQL array type of each column, by its SQLAlchemy type (others: text).
_ARRAY_CASTS = {"Uuid": "uuid", "UTCDateTime": "timestamptz", "JSONValue": "jsonb"}
_SQLITE_DEFAULT_MAX_PARAMS = 999  # SQLite before 3.32, when the driver cannot say
_POSTGRES_MAX_PARAMS = 65_535  # PostgreSQL's protocol limit


def _max_params(engine: Engine) -> int:
    """How many parameters one statement may carry on *engine*'s database."""
    if engine.dialect.name != "sqlite":
        return _POSTGRES_MAX_PARAMS
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            return int(driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))  # type: ignore[union-attr]
    except Exception:  # Python < 3.11 has no getlimit()
        return _SQLITE_DEFAULT_MAX_PARAMS


def _busy_timeout(conn: Connection, ms: int | None = None) -> int:
    """The SQLite connection's busy timeout (ms); set it to *ms* when given.

    Through the driver's own connection: SQLAlchemy would begin a transaction first.
    """
    driver = conn.connection.driver_connection
    if ms is not None:
        driver.execute(f"PRAGMA busy_timeout = {int(ms)}")  # type: ignore[union-attr]
        return ms
    return int(driver.execute("PRAGMA busy_timeout").fetchone()[0])  # type: ignore[union-attr]


def _lower_busy_timeout(conn: Connection) -> int:
    """Set the connection's SQLite busy timeout to SQLITE_BUSY_MS; return the one it had."""
    info = conn.connection.info
    had = info.get("obs_sdk.busy_timeout")
    if had is None:
        had = info["obs_sdk.busy_timeout"] = _busy_timeout(conn)
    _busy_timeout(conn, SQLITE_BUSY_MS)
    return int(had)


# SQLite reports both passing contention and permanent faults as OperationalError;
# these messages mean retrying cannot help.
_PERMANENT_SQLITE = ("no such table", "readonly database", "no such column", "has no column")


# How many times one record may find its new id taken too before its batch fails.
_ID_ATTEMPTS = 5
# Bound on the ids remembered from exports that raised (see DatabaseSink._unsure): a batch's
# retries follow its failure at once, so a few batches' worth is plenty.
_MAX_UNSURE = 10_000


# SQLite and fork(): a thread inside the SQLite library may hold one of its process-wide
# mutexes (its allocator's, its page cache's); a child forked then waits on it forever, in
# its first sqlite3.connect(). So the SQLite sink holds a lock of its own while it is inside
# the driver, and a fork takes it first. It never waits long: the sink's connections wait
# at most SQLITE_BUSY_MS for another connection's lock (then the dispatcher retries with
# backoff, outside the driver), so a fork waits for a statement in progress, never for a
# lock, a network or a retry.
SQLITE_BUSY_MS = 50
FORK_WAIT_SECONDS = 2.0  # a safety bound only: a statement takes milliseconds
_sqlite_sinks: weakref.WeakSet[DatabaseSink] = weakref.WeakSet()
_held: list[DatabaseSink] = []


def _hold_drivers() -> None:
    for sink in list(_sqlite_sinks):
        if sink._in_driver.acquire(timeout=FORK_WAIT_SECONDS):
            _held.append(sink)


def _release_drivers() -> None:
    for sink in _held:
        sink._in_driver.release()
    _held.clear()


def _fresh_driver_locks() -> None:
    _held.clear()
    for sink in list(_sqlite_sinks):
        sink._in_driver = threading.Lock()


os.register_at_fork(
    before=_hold_drivers, after_in_parent=_release_drivers, after_in_child=_fresh_driver_locks
)


class DatabaseSink:
    """Insert audit records into ``obs_audit_log`` in batches; no record is ever skipped.

    Rows go in with ``ON CONFLICT (id) DO NOTHING``, so a retried batch never duplicates
    the rows an earlier attempt wrote. An id taken by another record (ids collided: a
    repeating ``id_factory``, or any other cause) is not such a retry: that record gets a
    new id, is written, and the collision is logged and counted in ``internal_errors``.

    On SQLite it writes through *write_engine* when given (obs_sdk's own engine for the
    file, whose connections wait SQLITE_BUSY_MS for a lock), else through *engine* with the
    busy timeout lowered to SQLITE_BUSY_MS for its own transactions (the app's engine).
    """

    name = "database"
    kinds = frozenset({AUDIT})

    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        *,
        owns_engine: bool,
        write_engine: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.table = tables.audit
        self._owns_engine = owns_engine
        self.write_engine = write_engine or engine
        sqlite_file = engine.dialect.name == "sqlite" and engine.url.database not in (
            None,
            "",
            ":memory:",
        )
        # The app's SQLite engine: lower the busy timeout around each write, then restore it.
        self._lower_busy = sqlite_file and write_engine is None
        # Held while inside the SQLite driver (see _hold_drivers); other drivers need none.
        self._sqlite = engine.dialect.name == "sqlite"
        self._in_driver = threading.Lock()
        if self._sqlite:
            _sqlite_sinks.add(self)
        self._insert = insert_ignoring_duplicates(self.table, engine.dialect.name)
        self._driver = (
            _DriverInsert(self.table, engine.dialect.name, _max_params(engine))
            if engine.dialect.name in ("sqlite", "postgresql")
            else None
        )
        # While this is the only sink taking audits, the dispatcher hands it rows made by
        # render_alone(raw) rather than AuditRecords: the id and time go straight to text the
        # database stores (a fifth of the drain was making and unmaking the objects).
        self.render_alone = {"sqlite": _sqlite_row_of, "postgresql": _postgres_row_of}.get(
            engine.dialect.name
        )
        # Ids of rows sent by an export that raised: that attempt may have written them
        # (a commit whose answer was lost), so a retry that finds them taken found its own
        # rows. Any other id found taken is a collision. Insertion-ordered, oldest first.
        self._unsure: dict[Any, None] = {}

    def export(self, batch: Sequence[AuditRecord | tuple[Any, ...]], /) -> None:
        # On SQLite and PostgreSQL, rows go to the driver as tuples already in the stored
        # form: SQLAlchemy's per-row parameter processing was 40 % of the drain.
        driver = self._driver
        if driver is None:
            with self.engine.begin() as conn:  # other dialects never render alone: records
                conn.execute(self._insert, [cast(AuditRecord, r).as_dict() for r in batch])
            return None
        row = driver.row
        rows = [r if type(r) is tuple else row(r) for r in batch]  # type: ignore[arg-type]
        collided: set[Any] = set()
        try:
            if self._sqlite:
                with self._in_driver:
                    replaced = self._write(driver, rows, collided)
            else:
                replaced = self._write(driver, rows, collided)
        except Exception:
            # Rows found taken by another record were not written under their ids.
            self._remember_unsure(r[0] for r in rows if r[0] not in collided)
            raise
        unsure = self._unsure
        if unsure:
            for r in rows:
                unsure.pop(r[0], None)
        for taken, replacement in replaced:
            count_error("id_collision", IdCollision(as_uuid(taken), as_uuid(replacement)))
        return None

    def _write(
        self, driver: _DriverInsert, rows: list[tuple[Any, ...]], collided: set[Any]
    ) -> list[tuple[Any, Any]]:
        """Insert *rows* in one transaction; return the (taken, new) ids of collided rows.

        The statements' row counts say whether every row was written (one per inserted
        row). Only when some were skipped is the batch rolled back and inserted again row by
        row, learning from each insert (``RETURNING id``) whether it was written: a skipped
        row is a retry's own (its id in ``_unsure``) or a collision.
        """
        with self.write_engine.connect() as conn:
            restore = _lower_busy_timeout(conn) if self._lower_busy else None
            try:
                with conn.begin() as transaction:
                    if driver.insert(conn, rows) == len(rows):
                        return []
                    transaction.rollback()
                with conn.begin():
                    return self._write_checking(conn, driver.sql, rows, collided)
            finally:
                if restore is not None:
                    _busy_timeout(conn, restore)

    def _write_checking(
        self, conn: Connection, sql: str, rows: list[tuple[Any, ...]], collided: set[Any]
    ) -> list[tuple[Any, Any]]:
        returning = conn.dialect.insert_returning
        if returning:
            sql += " RETURNING id"
        replaced: list[tuple[Any, Any]] = []
        pending = rows
        for _ in range(_ID_ATTEMPTS):
            skipped = []
            for r in pending:
                result = conn.exec_driver_sql(sql, r)
                written = result.first() is not None if returning else result.rowcount == 1
                if not written and r[0] not in self._unsure:
                    skipped.append(r)
            if not skipped:
                return replaced
            pending = []
            for r in skipped:
                collided.add(r[0])
                replacement = replacement_id(r[0])
                replaced.append((r[0], replacement))
                pending.append((replacement, *r[1:]))
        raise RuntimeError(f"no free audit record id after {_ID_ATTEMPTS} attempts")

    def _remember_unsure(self, ids: Iterable[Any]) -> None:
        unsure = self._unsure
        unsure.update(dict.fromkeys(ids))
        while len(unsure) > _MAX_UNSURE:
            del unsure[next(iter(unsure))]

    def is_transient(self, error: Exception, /) -> bool:
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
            message = str(error).lower()
            return not any(m in message for m in _PERMANENT_SQLITE)
        return False

    def flush(self, timeout: float, /) -> None:
        return None

    def shutdown(self, timeout: float, /) -> None:
        if self._owns_engine:
            self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()

    def after_fork(self) -> None:
        # The parent's pooled connections must not be used (or closed) by the child.
        self.engine.dispose(close=False)
        if self.write_engine is not self.engine:
            self.write_engine.dispose(close=False)
        self._unsure.clear()  # the parent's exports; the child retries none of them


class PostHogSink:
    """Hand analytics events to the app's ``posthog.Posthog`` client (never shut it down).

    ``capture()`` only enqueues into the client's own queue; its consumer thread uploads.
    Upload failures reach obs.stats() through ``on_error=obs.posthog_on_error``.
    """

    name = "posthog"
    kinds = frozenset({EVENT, GROUP})

    def __init__(self, client: posthog.Posthog) -> None:
        self.client = client
        _posthog_log.install(client)  # one line per outage, not one per failed batch

    def export(self, batch: Sequence[AnalyticsEvent], /) -> list[int]:
        """Hand *batch* to the client; return the positions it refused.

        ``capture()`` returns None when the client did not take the event: its own queue is
        full (``max_queue_size``), it is disabled, shut down, or ``before_send`` dropped it.
        """
        client = self.client
        refused = []
        for i, event in enumerate(batch):
            if event.kind == GROUP:
                ((group_type, group_key),) = event.groups.items()
                taken = client.group_identify(
                    group_type,
                    group_key,
                    properties=event.properties,
                    timestamp=event.timestamp,
                    uuid=str(event.uuid),
                )
            else:
                taken = client.capture(
                    event.event,
                    distinct_id=event.distinct_id,
                    properties=event.properties,
                    timestamp=event.timestamp,
                    uuid=str(event.uuid),
                    groups=event.groups or None,
                )
            if taken is None:
                refused.append(i)
        return refused

    def is_transient(self, error: Exception, /) -> bool:
        return False  # capture() only enqueues; the client retries uploads itself

    def flush(self, timeout: float, /) -> bool:
        """Flush the client; False while its queue still holds events (sent or not)."""
        with _posthog_log.flushing():
            self.client.flush(timeout_seconds=max(timeout, 0.001))
        queue = getattr(self.client, "queue", None)  # the analytics lane's queue.Queue
        return not getattr(queue, "unfinished_tasks", 0)

    def shutdown(self, timeout: float, /) -> None:
        # The client belongs to the app: flush it, never shut it down.
        self.flush(timeout)

    def after_fork(self) -> None:
        return None  # posthog re-creates its own consumers after fork
