"""once(): an idempotency key written in the caller's transaction, and its purge.

The key is one ``INSERT … ON CONFLICT DO NOTHING RETURNING key`` in the caller's
transaction, so it commits or rolls back with the work it guards. Inside a repeated key
everything audited, tracked or metered is suppressed; inside a first-time key, analytics
uuids derive from the key (see ``_records.render_event``), so a redelivery that runs
again after a rollback sends the very same uuids and PostHog counts them once.
"""

from __future__ import annotations

import datetime
import threading
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from obs_sdk import _config
from obs_sdk._context import frame_with, suppressed
from obs_sdk._records import EVENT, Instrumentation
from obs_sdk._tables import tables
from obs_sdk.exceptions import ConfigurationError

__all__ = ["once", "purge_idempotency_keys"]

MAX_KEY_LENGTH = 255  # the width of obs_idempotency_keys.key


class KeyCounter:
    """Number the analytics events made inside one first-time key, per event name.

    The hot path calls ``next(spec)`` for every record made in the key's frame. It
    returns ``(key, n)`` for analytics events, n counting from 0 per event name, and
    None for audit records (their ids stay time-ordered). Thread-safe: threads that
    copied the context share one counter.
    """

    __slots__ = ("_counts", "_lock", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, spec: Instrumentation) -> tuple[str, int] | None:
        """Return ``(key, n)`` for the n-th event named ``spec.name`` here (from 0)."""
        if spec.kind != EVENT:
            return None
        with self._lock:
            n = self._counts.get(spec.name, 0)
            self._counts[spec.name] = n + 1
        return self.key, n


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"once(key=...) takes a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigurationError(
            f"once(key=...) takes at most {MAX_KEY_LENGTH} characters, got {len(key)}: "
            "hash long keys (e.g. 'export:' + sha256 hex)"
        )
    return key


def _insert_key(dialect_name: str, key: str) -> tuple[Executable, bool]:
    """Return the key insert, and whether it returns the inserted row."""
    table = tables(_config.current().table_prefix).idempotency_keys
    row = {"key": key, "created_at": datetime.datetime.now(datetime.timezone.utc)}
    if dialect_name in ("postgresql", "sqlite"):
        # Read the returned row: psycopg reports rowcount -1 for ON CONFLICT DO NOTHING.
        build = pg_insert if dialect_name == "postgresql" else sqlite_insert
        statement = (
            build(table).values(row).on_conflict_do_nothing(index_elements=["key"])
        ).returning(table.c.key)
        return statement, True
    return insert(table).values(row).prefix_with("IGNORE"), False  # MySQL/MariaDB spelling


class _Once:
    """What ``once()`` returns: ``with`` for a Session, ``async with`` for both."""

    __slots__ = ("_inner", "key", "session")

    def __init__(self, session: Session | AsyncSession, key: str) -> None:
        self.session = session
        self.key = key
        self._inner: AbstractContextManager[Any] | None = None

    def _open(self, sync: Session, first: bool) -> bool:
        if first:
            self._inner = frame_with(session=sync, idempotency=KeyCounter(self.key))
        else:
            self._inner = suppressed()
        self._inner.__enter__()
        return first

    def __enter__(self) -> bool:
        session = self.session
        if isinstance(session, AsyncSession):
            raise ConfigurationError(
                f"once({self.key!r}) got an AsyncSession: use `async with obs.once()`"
            )
        statement, returns_row = _insert_key(session.get_bind().dialect.name, self.key)
        result = session.execute(statement)
        first = result.first() is not None if returns_row else result.rowcount == 1  # type: ignore[attr-defined]
        return self._open(session, first)

    async def __aenter__(self) -> bool:
        session = self.session
        if not isinstance(session, AsyncSession):
            return self.__enter__()
        statement, returns_row = _insert_key(session.get_bind().dialect.name, self.key)
        result = await session.execute(statement)
        first = result.first() is not None if returns_row else result.rowcount == 1  # type: ignore[attr-defined]
        return self._open(session.sync_session, first)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.__exit__(exc_type, exc, tb)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def once(session: Session | AsyncSession, key: str) -> _Once:
    """Run a block's effects once per *key*: yield True the first time, else False.

    ``with obs.once(session, "stripe:evt_1") as first:`` inserts *key* into
    ``obs_idempotency_keys`` inside *session*'s transaction (``INSERT … ON CONFLICT DO
    NOTHING RETURNING``; no savepoint), so the key commits or rolls back with the work:
    after a rollback the next attempt runs again. Use ``async with`` for an
    ``AsyncSession``.

    Inside a repeated key (``first`` is False) everything audited, tracked or metered
    is suppressed. Inside a first-time key, success records join *session*'s
    transaction and each analytics event's uuid is uuid5 over (key, event name, n), n
    counting that event name inside the key from 0, so a redelivery can never count
    twice in PostHog.

    On PostgreSQL a second transaction entering the same key waits for the first one's
    outcome: committed, it sees a duplicate; rolled back, it runs. On SQLite writers
    serialise on the database lock. The block runs on the caller's thread or task; one
    ``once()`` object serves one block.

    Raises:
        ConfigurationError: *key* is not a non-empty string of at most 255 characters.
        sqlalchemy.exc.SQLAlchemyError: the key could not be written (e.g. a missing
            table or a lost connection); never swallowed, since running a payment twice
            is worse than failing.
    """
    if not isinstance(session, (Session, AsyncSession)):
        raise ConfigurationError(
            f"once() takes a SQLAlchemy Session or AsyncSession, got {type(session).__name__}"
        )
    return _Once(session, _check_key(key))


def purge_idempotency_keys(
    session: Session | Connection,
    *,
    older_than: datetime.timedelta | datetime.datetime | None = None,
) -> int:
    """Delete idempotency keys older than *older_than*; return how many were deleted.

    *older_than* is an age (``timedelta``) or an aware cutoff ``datetime``; by default
    the ``configure(idempotency_retention=...)`` age (30 days, beyond Stripe's 3 days
    of retries). Runs in *session*'s transaction: commit it. For an ``AsyncSession`` use
    ``await session.run_sync(obs.purge_idempotency_keys)``. Thread-safe.

    Raises:
        ConfigurationError: *older_than* is negative or a naive datetime.
    """
    if isinstance(session, AsyncSession):
        raise ConfigurationError(
            "purge_idempotency_keys() is synchronous: for an AsyncSession call "
            "`await session.run_sync(obs.purge_idempotency_keys)`"
        )
    config = _config.current()
    if older_than is None:
        older_than = config.idempotency_retention
    if isinstance(older_than, datetime.timedelta):
        if older_than < datetime.timedelta(0):
            raise ConfigurationError("purge_idempotency_keys(older_than=...) must not be negative")
        cutoff = datetime.datetime.now(datetime.timezone.utc) - older_than
    elif isinstance(older_than, datetime.datetime) and older_than.tzinfo is not None:
        cutoff = older_than
    else:
        raise ConfigurationError(
            "purge_idempotency_keys(older_than=...) takes a timedelta (an age) or an "
            f"aware datetime (a cutoff), got {older_than!r}"
        )
    table = tables(config.table_prefix).idempotency_keys
    result = session.execute(delete(table).where(table.c.created_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
