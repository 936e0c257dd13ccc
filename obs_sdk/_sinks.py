"""Sinks deliver rendered records to one destination each: the SQL store and PostHog."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from obs_sdk import _records
from obs_sdk._guard import count_error
from obs_sdk._records import (
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
from obs_sdk._redact import to_json
from obs_sdk._tables import Tables, insert_ignoring_duplicates

if TYPE_CHECKING:
    import posthog

__all__ = ["DatabaseSink", "PostHogSink", "Sink"]

Record = Any  # AuditRecord | AnalyticsEvent


class Sink(Protocol):
    """**Protocol:** delivers rendered records to one destination.

    Called only from the dispatcher thread (or at commit), with instrumentation suppressed.
    ``export`` may raise; the dispatcher logs, counts and, when ``is_transient`` says the
    error may pass, retries with backoff. ``kinds`` names the record kinds it takes.
    A sink may also have ``render_alone(raw)``: while it is the only sink taking audits,
    the dispatcher exports what that returns instead of an ``AuditRecord``.
    """

    name: str
    kinds: frozenset[str]

    def export(self, batch: Sequence[Record], /) -> None: ...
    def is_transient(self, error: Exception, /) -> bool: ...
    def flush(self, timeout: float, /) -> None: ...
    def shutdown(self, timeout: float, /) -> None: ...
    def after_fork(self) -> None: ...


def _sqlite_row(r: AuditRecord) -> tuple[Any, ...]:
    # The forms SQLAlchemy's Uuid and DateTime types store on SQLite: 32 hex digits, and
    # naive UTC text with microseconds (UTCDateTime reads it back as aware UTC). Columns
    # 2..18 pass as they are.
    return (f"{r[0].int:032x}", _sqlite_time(r[1]), *r[2:19], to_json(r[19]), r[20])


def _sqlite_time(moment: datetime.datetime) -> str:
    """``moment.isoformat(" ", "microseconds")`` without its (UTC) offset."""
    return moment.isoformat(" ", "microseconds")[:26]


_EPOCH = datetime.datetime(1970, 1, 1)
# The last second's stored text: records come in bursts within a second. One tuple, swapped
# whole, so threads never see half an update.
_last_prefix: tuple[int | None, str] = (None, "")


def _sqlite_row_of(raw: RawRecord) -> tuple[Any, ...]:
    """``_sqlite_row(render_audit(raw))``, without making the UUID, datetime and record."""
    global _last_prefix
    time_ns = raw[TIME_NS]
    make_id = _records.settings.id_factory  # configure() replaces the settings object
    record_id = uuid7.hex(time_ns) if make_id is uuid7 else make_id(time_ns).hex
    seconds, micros = divmod(time_ns // 1000, 1_000_000)
    known, prefix = _last_prefix
    if seconds != known:
        prefix = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat(" ")
        _last_prefix = (seconds, prefix)
    r = audit_columns(raw, record_id, f"{prefix}.{micros:06d}")
    return (*r[:19], to_json(r[19]), r[20])


def _postgres_row(r: AuditRecord) -> tuple[Any, ...]:
    return (*r[:19], to_json(r[19]), r[20])


def _as_uuid(stored: Any) -> uuid.UUID:
    return uuid.UUID(hex=stored) if isinstance(stored, str) else stored


def _replacement(taken: Any) -> Any:
    """A new id in the stored form of *taken* (SQLite: 32 hex digits; PostgreSQL: a UUID)."""
    if isinstance(taken, str):
        return uuid7.replacing(uuid.UUID(hex=taken)).hex
    return uuid7.replacing(taken)


def _driver_insert(
    table: Table, dialect_name: str
) -> tuple[str | None, Callable[[AuditRecord], tuple[Any, ...]]]:
    """The INSERT for the driver's own executemany, and the row builder matching it."""
    columns = [c.name for c in table.columns]
    assert columns == list(AuditRecord._fields), "the row builders slice records by column"
    quoted = ", ".join(f'"{name}"' for name in columns)
    if dialect_name == "sqlite":
        values = ", ".join("?" for _ in columns)
        row = _sqlite_row
    elif dialect_name == "postgresql":
        values = ", ".join("CAST(%s AS JSONB)" if c == "metadata" else "%s" for c in columns)
        row = _postgres_row
    else:
        return None, _postgres_row
    sql = f'INSERT INTO "{table.name}" ({quoted}) VALUES ({values}) ON CONFLICT (id) DO NOTHING'
    return sql, row


# SQLite reports both passing contention and permanent faults as OperationalError;
# these messages mean retrying cannot help.
_PERMANENT_SQLITE = ("no such table", "readonly database", "no such column", "has no column")


# How many times one record may find its new id taken too before its batch fails.
_ID_ATTEMPTS = 5
# Bound on the ids remembered from exports that raised (see DatabaseSink._unsure): a batch's
# retries follow its failure at once, so a few batches' worth is plenty.
_MAX_UNSURE = 10_000


class DatabaseSink:
    """Insert audit records into ``obs_audit_log`` in batches; no record is ever skipped.

    Rows go in with ``ON CONFLICT (id) DO NOTHING``, so a retried batch never duplicates
    the rows an earlier attempt wrote. An id taken by another record (ids collided: a
    repeating ``id_factory``, or any other cause) is not such a retry: that record gets a
    new id, is written, and the collision is logged and counted in ``internal_errors``.
    """

    name = "database"
    kinds = frozenset({AUDIT})

    def __init__(self, engine: Engine, tables: Tables, *, owns_engine: bool) -> None:
        self.engine = engine
        self.table = tables.audit
        self._owns_engine = owns_engine
        self._insert = insert_ignoring_duplicates(self.table, engine.dialect.name)
        self._driver_sql, self._driver_row = _driver_insert(self.table, engine.dialect.name)
        # While this is the only sink taking audits, the dispatcher hands it rows made by
        # render_alone(raw) rather than AuditRecords: on SQLite the id and time go straight
        # to their stored text (a fifth of the drain was making and unmaking the objects).
        self.render_alone = _sqlite_row_of if engine.dialect.name == "sqlite" else None
        # Ids of rows sent by an export that raised: that attempt may have written them
        # (a commit whose answer was lost), so a retry that finds them taken found its own
        # rows. Any other id found taken is a collision. Insertion-ordered, oldest first.
        self._unsure: dict[Any, None] = {}

    def export(self, batch: Sequence[AuditRecord | tuple[Any, ...]], /) -> None:
        # On SQLite and PostgreSQL, rows go to the driver's executemany as tuples already in
        # the stored form: SQLAlchemy's per-row parameter processing was 40 % of the drain.
        sql = self._driver_sql
        if sql is None:
            with self.engine.begin() as conn:  # other dialects never render alone: records
                conn.execute(self._insert, [cast(AuditRecord, r).as_dict() for r in batch])
            return
        row = self._driver_row
        rows = [r if type(r) is tuple else row(r) for r in batch]  # type: ignore[arg-type]
        collided: set[Any] = set()
        try:
            replaced = self._write(sql, rows, collided)
        except Exception:
            # Rows found taken by another record were not written under their ids.
            self._remember_unsure(r[0] for r in rows if r[0] not in collided)
            raise
        unsure = self._unsure
        if unsure:
            for r in rows:
                unsure.pop(r[0], None)
        for taken, replacement in replaced:
            count_error("id_collision", IdCollision(_as_uuid(taken), _as_uuid(replacement)))

    def _write(
        self, sql: str, rows: list[tuple[Any, ...]], collided: set[Any]
    ) -> list[tuple[Any, Any]]:
        """Insert *rows* in one transaction; return the (taken, new) ids of collided rows.

        The executemany's row count says whether every row was written (both drivers sum
        it, one per inserted row). Only when some were skipped is the batch rolled back and
        inserted again row by row, learning from each insert (``RETURNING id``) whether it
        was written: a skipped row is a retry's own (its id in ``_unsure``) or a collision.
        """
        with self.engine.connect() as conn:
            with conn.begin() as transaction:
                if conn.exec_driver_sql(sql, rows).rowcount == len(rows):
                    return []
                transaction.rollback()
            with conn.begin():
                return self._write_checking(conn, sql, rows, collided)

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
                replacement = _replacement(r[0])
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

    def after_fork(self) -> None:
        # The parent's pooled connections must not be used (or closed) by the child.
        self.engine.dispose(close=False)
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

    def export(self, batch: Sequence[AnalyticsEvent], /) -> None:
        client = self.client
        for event in batch:
            if event.kind == GROUP:
                ((group_type, group_key),) = event.groups.items()
                client.group_identify(
                    group_type,
                    group_key,
                    properties=event.properties,
                    timestamp=event.timestamp,
                    uuid=str(event.uuid),
                )
                continue
            client.capture(
                event.event,
                distinct_id=event.distinct_id,
                properties=event.properties,
                timestamp=event.timestamp,
                uuid=str(event.uuid),
                groups=event.groups or None,
            )

    def is_transient(self, error: Exception, /) -> bool:
        return False  # capture() only enqueues; the client retries uploads itself

    def flush(self, timeout: float, /) -> None:
        self.client.flush(timeout_seconds=max(timeout, 0.001))

    def shutdown(self, timeout: float, /) -> None:
        # The client belongs to the app: flush it, never shut it down.
        self.flush(timeout)

    def after_fork(self) -> None:
        return None  # posthog re-creates its own consumers after fork
