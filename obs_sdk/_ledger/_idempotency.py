"""once() and @idempotent: an idempotency key written in the caller's transaction; its purge.

The key is one ``INSERT … ON CONFLICT DO NOTHING RETURNING key`` in the caller's
transaction, so it commits or rolls back with the work it guards. Inside a repeated key
everything audited, tracked or metered is suppressed (the first delivery made those
records and charges); inside a first-time key, analytics uuids derive from the key (see
``_records.render_event``), so a redelivery that runs again after a rollback sends the
very same uuids and PostHog counts them once.

``once()`` cannot skip its block, so the flag it yields notes whether it was read: a
repeated key whose flag nobody read ran its work a second time, and that warns.
``@idempotent`` is the form that cannot be misused: it skips the body of a duplicate.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import string
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from sqlalchemy import delete, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_session
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from obs_sdk import _config
from obs_sdk._guard import count, logger
from obs_sdk._hotpath._params import Params
from obs_sdk._hotpath._plain import Call
from obs_sdk._hotpath._records import EVENT, Instrumentation
from obs_sdk._hotpath._resolving import ARGS
from obs_sdk._hotpath._templates import Plan
from obs_sdk._ledger._older_than import cutoff_from
from obs_sdk._ledger._session_block import SessionBlock
from obs_sdk._ledger._tables import tables
from obs_sdk._scope._context import current_scope, frame_with, repeated_key
from obs_sdk.exceptions import ConfigurationError

__all__ = ["FirstFlag", "idempotent", "once", "purge_idempotency_keys"]

MAX_KEY_LENGTH = 255  # the width of obs_idempotency_keys.key

P = ParamSpec("P")
R = TypeVar("R")


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


class FirstFlag:
    """What ``with obs.once(session, key) as first:`` yields: true on the key's first delivery.

    Use it as a bool: ``if first:`` / ``if not first:``; it also equals True or False
    (``first == True``), and its repr names the key and the answer. It is not a ``bool``
    (one cannot be subclassed, and a plain bool could not tell whether it was read):
    ``first is True``, ``isinstance(first, bool)`` and ``match first: case True:`` are
    always false; write ``if first:``. Asking its truth or
    comparing it notes that it was read: a repeated key whose flag was never read warns at
    the block's exit, since the block then ran its work a second time. Not thread-safe
    (one flag belongs to one block).
    """

    __slots__ = ("_first", "key", "read")

    def __init__(self, key: str, first: bool) -> None:
        self.key = key
        self._first = first
        self.read = False

    def __bool__(self) -> bool:
        self.read = True
        return self._first

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FirstFlag):
            other.read = True
            other = other._first
        if not isinstance(other, int):  # bool is an int: True == 1, as for a bool
            return NotImplemented
        self.read = True
        return self._first == other

    def __hash__(self) -> int:
        return hash(self._first)  # equal to True or False, so hashed like them

    def __repr__(self) -> str:
        return f"<obs.once {self.key!r}: {'first' if self._first else 'duplicate'}>"


class _Once(SessionBlock[bool, FirstFlag]):
    """What ``once()`` returns: ``with`` for a Session, ``async with`` for both.

    The key's row needs no statement at exit (no ``_end``): it commits or rolls back with
    the caller's transaction.
    """

    __slots__ = ("_flag", "_inner", "_session", "key")

    def __init__(self, session: Session | AsyncSession, key: str) -> None:
        self._session = session
        self.key = key
        self._inner: AbstractContextManager[Any] | None = None
        self._flag: FirstFlag | None = None

    def _needs_async_with(self) -> ConfigurationError:
        return ConfigurationError(
            f"once({self.key!r}) got an AsyncSession: use `async with obs.once()`"
        )

    def _begin(self, session: Session) -> bool:
        statement, returns_row = _insert_key(session.get_bind().dialect.name, self.key)
        result = session.execute(statement)
        return result.first() is not None if returns_row else result.rowcount == 1  # type: ignore[attr-defined]

    def _enter(self, session: Session, first: bool) -> FirstFlag:
        if first:
            self._inner = frame_with(session=session, idempotency=KeyCounter(self.key))
        else:
            # No records and no metering: the key's first delivery made them.
            self._inner = repeated_key()
        self._inner.__enter__()
        self._flag = FirstFlag(self.key, first)
        return self._flag

    def _exit(self, succeeded: bool) -> None:
        inner, self._inner = self._inner, None
        flag, self._flag = self._flag, None
        if inner is not None:
            inner.__exit__(None, None, None)
        if flag is not None and not flag._first and not flag.read:
            count("duplicate_unread")
            logger.warning(
                "obs.once(%r) was a duplicate, but its flag was never read, so the block ran "
                "its work again (only its audit, analytics and metering were suppressed): "
                "write `with obs.once(session, key) as first:` and do the work under "
                "`if first:`, or use @obs.idempotent(key=...), which skips a duplicate's body",
                self.key,
            )


def once(session: Session | AsyncSession, key: str) -> _Once:
    """Mark a block's work as done once per *key*: yield a flag, true the first time only.

    ``with obs.once(session, "stripe:evt_1") as first:`` inserts *key* into
    ``obs_idempotency_keys`` inside *session*'s transaction (``INSERT … ON CONFLICT DO
    NOTHING RETURNING``; no savepoint), so the key commits or rolls back with the work:
    after a rollback the next attempt runs again. Use ``async with`` for an
    ``AsyncSession``.

    The block always runs: do the work under ``if first:``. *first* is a ``FirstFlag``
    (a bool in ``if``/``not``, equal to True or False, but never ``is True`` and not a
    ``bool`` instance: test it with ``if``); a repeated key whose flag was
    never read logs a WARNING naming the key at the block's exit and counts
    ``obs.stats()["duplicate_unread"]``. ``@obs.idempotent`` skips a duplicate's body.

    Inside a repeated key (``first`` is false) everything audited, tracked or metered
    is suppressed: the first delivery made those records and charges (``suppressed()``,
    by contrast, silences records only). Inside a first-time key, success records join
    *session*'s transaction and each analytics event's uuid is uuid5 over (key, event
    name, n), n counting that event name inside the key from 0, so a redelivery can
    never count twice in PostHog.

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
    now = datetime.datetime.now(datetime.timezone.utc)
    cutoff = cutoff_from(older_than, "purge_idempotency_keys", now)
    table = tables(config.table_prefix).idempotency_keys
    result = session.execute(delete(table).where(table.c.created_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]


class _KeyedDecorator(Protocol):
    """What ``idempotent(...)`` returns: the decorator, typed for plain and async functions."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, R | None]: ...


class _KeySpec:
    """The key template and session lookup of one decorated function, checked when decorating."""

    def __init__(self, func: Callable[..., Any], template: str | Callable[[Call], Any]) -> None:
        params = Params(func)
        self.qualname = params.qualname
        shown = repr(template) if isinstance(template, str) else "<callable>"
        self.owner = f"@idempotent(key={shown}) on {params.qualname}"
        if isinstance(template, str):
            _refuse_result(template, params, self.owner)
        # when="start": fields over the arguments only, resolved before the call.
        self._plan = Plan(self.owner, params, "start")
        self._plan.add("key", template)
        self._session_arg = params.getter("session") if "session" in params.by_name else None

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Render this call's key; raise rather than guess when a field cannot be read."""
        values = []
        for kind, resolve in self._plan.resolvers:
            try:
                if kind == ARGS:
                    value = resolve(args, kwargs, None)
                else:  # a callable taking the call
                    value = resolve(self._plan.call(args, kwargs, None, None))
            except Exception as exc:
                raise ConfigurationError(
                    f"{self.owner}: this call's key could not be read ({type(exc).__name__}: {exc})"
                ) from exc
            if value is None:
                # "stripe:None" would make every call without an id share one key.
                raise ConfigurationError(
                    f"{self.owner}: a field of the key is None in this call, so the key "
                    "would not identify it; pass the id the key is built from"
                )
            values.append(value)
        try:
            key = self._plan.render("key", tuple(values))
        except Exception as exc:  # a format spec that does not fit the value
            raise ConfigurationError(
                f"{self.owner}: this call's key could not be built ({type(exc).__name__}: {exc})"
            ) from exc
        return key if isinstance(key, str) else str(key)

    def session(self, args: tuple[Any, ...], kwargs: dict[str, Any], awaited: bool) -> Any:
        """Return the session to write the key in: the ``session`` argument, else the scope's."""
        session = self._session_arg(args, kwargs) if self._session_arg is not None else None
        if session is None:
            session = current_scope().session  # a Session (an AsyncSession's sync_session)
        if session is None:
            where = "its `session` argument is None and " if self._session_arg else ""
            raise ConfigurationError(
                f"{self.owner}: no session to write the key in: {where}no obs.scope(session=...) "
                "is open. Pass a SQLAlchemy session as an argument named `session`, or call it "
                "inside `with obs.scope(session=session):` (the key must commit with the work: "
                "running it twice is worse than failing)"
            )
        if not isinstance(session, (Session, AsyncSession)):
            raise ConfigurationError(
                f"{self.owner}: the session must be a SQLAlchemy Session or AsyncSession, "
                f"got {type(session).__name__}"
            )
        # The Session inside an AsyncSession runs only through it (on the event loop).
        proxy = async_session(session) if isinstance(session, Session) else None
        if awaited:
            return proxy if proxy is not None else session
        if proxy is not None or isinstance(session, AsyncSession):
            raise ConfigurationError(
                f"{self.owner}: got an AsyncSession, but {self.qualname} is a plain function: "
                "make it `async def` (the key is then written with `async with obs.once()`)"
            )
        return session


def _refuse_result(template: str, params: Params, owner: str) -> None:
    """``{result...}`` names what the call returns: the key is needed before it runs."""
    if "result" in params.by_name:
        return  # a parameter named result
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError:
        return  # Plan.add explains a malformed template
    for field in fields:
        if field.split(".", 1)[0].split("[", 1)[0] == "result":
            raise ConfigurationError(
                f"{owner}: {{{field}}} names the result, but the key is needed before the "
                "call runs; build it from the arguments (like 'stripe:{event.id}')"
            )


def idempotent(key: str | Callable[[Call], Any]) -> _KeyedDecorator:
    """Run the decorated function once per key: ``once()`` around each call.

    ``@obs.idempotent(key="stripe:{event.id}")`` renders the key from the call's arguments
    (a template like ``@audited``'s fields, checked against the signature here; a
    ``{result...}`` field is refused, since the key is needed before the call), or a
    callable taking the call (``call.args`` by name: e.g. to hash a long key); it enters
    ``obs.once(session, key)``. The first delivery runs the body inside the key: its
    records join the session's transaction and its analytics uuids derive from the key. A
    duplicate skips the body and returns None. The key is written in the caller's
    transaction and commits with it: commit after the call (a rollback lets the next
    attempt run the body again).

    The session is the function's argument named ``session`` when it has one (and it is
    not None), else the scope's (``obs.scope(session=...)``); with neither, the call raises
    ``ConfigurationError``: running a payment twice is worse than failing. Plain functions
    need a ``Session``; ``async def`` functions take an ``AsyncSession`` (or a ``Session``).
    On PostgreSQL a concurrent second delivery waits for the first's transaction; on
    SQLite writers serialise on the database lock. Works on methods (either side of
    ``@classmethod``/``@staticmethod``); keeps the name, signature and docstring.
    Thread-safe: concurrent calls race only on the key, each in its own session.

    Raises:
        ConfigurationError: when decorating, a template that names no parameter or a
            generator function; when called, no session, a key field that cannot be read
            or is None, or a key over 255 characters (as for ``once()``).
        sqlalchemy.exc.SQLAlchemyError: the key could not be written; never swallowed.
    """
    if not (isinstance(key, str) and key) and not (callable(key) and not isinstance(key, type)):
        raise ConfigurationError(
            "@idempotent(key=...) takes a template string like 'stripe:{event.id}' or a "
            f"callable taking the call, got {key!r}"
        )

    def decorate(func: Any) -> Any:
        if isinstance(func, (classmethod, staticmethod)):
            return type(func)(decorate(func.__func__))
        if not callable(func):
            raise ConfigurationError(f"@idempotent decorates functions and methods, not {func!r}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise ConfigurationError(
                f"@idempotent cannot wrap the generator function {func.__qualname__}: its "
                "body runs after the call returned, outside the key; return a list instead"
            )
        spec = _KeySpec(func, key)
        if inspect.iscoroutinefunction(func):

            async def run_async(*args: Any, **kwargs: Any) -> Any:
                name = spec.key(args, kwargs)
                async with once(spec.session(args, kwargs, awaited=True), name) as first:
                    if not first:
                        return None
                    return await func(*args, **kwargs)

            return functools.wraps(func)(run_async)

        def run(*args: Any, **kwargs: Any) -> Any:
            name = spec.key(args, kwargs)
            with once(spec.session(args, kwargs, awaited=False), name) as first:
                if not first:
                    return None
                return func(*args, **kwargs)

        return functools.wraps(func)(run)

    return decorate
