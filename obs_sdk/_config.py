"""configure, flush, shutdown, stats: the process-wide configuration and its lifecycle."""

from __future__ import annotations

import atexit
import datetime
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from obs_sdk import _context, _emit, _guard, _records, _tx
from obs_sdk._dispatch import DEFAULT_QUEUE_SIZE, dispatcher
from obs_sdk._redact import Redactor
from obs_sdk._sinks import DatabaseSink, PostHogSink, Sink
from obs_sdk._tables import DEFAULT_PREFIX, check_schema, create_tables, tables
from obs_sdk.exceptions import ConfigurationError

__all__ = ["configure", "current", "flush", "posthog_on_error", "shutdown", "stats"]

logger = logging.getLogger("obs_sdk")

DEFAULT_DATABASE = "sqlite:///obs.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Config:
    """The settings of the current configure() call (read by storage, once and the store)."""

    engine: Engine | None = None
    async_engine: AsyncEngine | None = None
    table_prefix: str = DEFAULT_PREFIX
    posthog: Any = None
    storage_quota: int | Callable[[str], int | None] | None = None
    audit_storage: bool = False
    idempotency_retention: datetime.timedelta = datetime.timedelta(days=30)


_current = Config()
_atexit_registered = False


def current() -> Config:
    """Return the active configuration (defaults before the first configure())."""
    return _current


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run beside the one writer; the busy timeout turns lock contention
        # into a wait instead of "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    finally:
        cursor.close()


def _engine_for_url(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # One shared connection: every pooled connection would otherwise be its own database.
        return create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


_SYNC_DRIVERS = {"aiosqlite": "pysqlite", "asyncpg": "psycopg", "psycopg_async": "psycopg"}


def _engines(database: object) -> tuple[Engine, AsyncEngine | None, bool]:
    """Return (sync engine for the worker, async engine if given, whether obs_sdk owns it)."""
    if isinstance(database, str):
        try:
            return _engine_for_url(database), None, True
        except Exception as exc:
            raise ConfigurationError(
                f"configure(database={database!r}) is not a usable SQLAlchemy URL: {exc}"
            ) from exc
    if isinstance(database, Engine):
        return database, None, False
    if isinstance(database, AsyncEngine):
        # The dispatcher thread writes synchronously: the same database through a sync driver.
        url = database.url
        driver = _SYNC_DRIVERS.get(url.get_driver_name(), url.get_driver_name())
        sync_url = url.set(drivername=f"{url.get_backend_name()}+{driver}")
        return _engine_for_url(sync_url.render_as_string(hide_password=False)), database, True
    raise ConfigurationError(
        "configure(database=...) takes a URL string (e.g. 'sqlite:///obs.db'), a SQLAlchemy "
        f"Engine or an AsyncEngine, got {type(database).__name__}"
    )


def _check_posthog(client: object) -> None:
    if client is None:
        return
    if inspect.ismodule(client):
        raise ConfigurationError(
            "configure(posthog=...) takes a client instance, not the posthog module: "
            "pass posthog.Posthog(project_api_key, host=..., on_error=obs.posthog_on_error)"
        )
    names = {cls.__name__ for cls in type(client).__mro__}
    if (
        "AsyncPosthog" in names
        or "AsyncClient" in names
        or inspect.iscoroutinefunction(getattr(client, "capture", None))
    ):
        raise ConfigurationError(
            "configure(posthog=...) needs the threaded posthog.Posthog client, not AsyncPosthog: "
            "obs_sdk already sends from its own background thread, never from your event loop"
        )
    if not callable(getattr(client, "capture", None)) or not callable(
        getattr(client, "flush", None)
    ):
        raise ConfigurationError(
            f"configure(posthog=...) takes a posthog.Posthog instance, got {type(client).__name__}"
        )


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"configure({name}=...) takes an int >= {minimum}, got {value!r}")
    return value


def configure(
    database: str | Engine | AsyncEngine = DEFAULT_DATABASE,
    posthog: Any = None,
    service: str | None = None,
    storage_quota: int | Callable[[str], int | None] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    table_prefix: str = DEFAULT_PREFIX,
    create_tables: bool = True,
    redact_keys: Iterable[str] = (),
    max_metadata_bytes: int = 8192,
    audit_storage: bool = False,
    idempotency_retention: datetime.timedelta = datetime.timedelta(days=30),
    otel_logs: Any = None,
    scope_provider: Callable[[], Mapping[str, Any]] | None = None,
    *,
    require_actor: bool = False,
    person_properties: bool = False,
    clock: Callable[[], int] | None = None,
    id_factory: Callable[[int], Any] | None = None,
) -> None:
    """Configure obs_sdk for this process: where records go and how they are shaped.

    Creates the missing obs_ tables (safe when several processes start at once) unless
    ``create_tables=False``, in which case the schema version is checked. Calling it again
    flushes the previous configuration and replaces it; after ``shutdown()`` it starts
    afresh. Records made before the first call wait in the bounded queue.

    A record made with no actor in scope is filed anonymous and counted in
    ``stats()["no_actor"]`` (audit records, and analytics events sent with
    ``allow_anonymous``). ``require_actor=True`` also logs a WARNING on the "obs_sdk"
    logger naming the action, once per action, for code that should always run with an
    actor (behind authentication, in jobs that set one).

    ``person_properties=True`` adds the actor's name and email as ``$set`` to analytics
    events. ``clock`` (ns since the epoch) and ``id_factory`` are for deterministic tests.

    Raises:
        ConfigurationError: an argument is wrong or the database cannot be prepared; the
            message says what to fix. Not thread-safe: call it once at startup.
    """
    global _current
    _check_posthog(posthog)
    queue_size = _check_int("queue_size", queue_size, 1)
    max_metadata_bytes = _check_int("max_metadata_bytes", max_metadata_bytes, 256)
    if storage_quota is not None and not callable(storage_quota):
        _check_int("storage_quota", storage_quota, 0)
    if not isinstance(require_actor, bool):
        raise ConfigurationError(
            f"configure(require_actor=...) takes True or False, got {require_actor!r}"
        )
    if scope_provider is not None and not callable(scope_provider):
        raise ConfigurationError("configure(scope_provider=...) takes a callable returning a dict")
    if not isinstance(idempotency_retention, datetime.timedelta) or (
        idempotency_retention <= datetime.timedelta(0)
    ):
        raise ConfigurationError(
            "configure(idempotency_retention=...) takes a positive datetime.timedelta"
        )
    if isinstance(redact_keys, str):
        raise ConfigurationError("configure(redact_keys=...) takes a list of words, not one string")
    prefix_tables = tables(table_prefix)  # validates the prefix
    engine, async_engine, owns_engine = _engines(database)
    try:
        _prepare(engine, table_prefix, create=create_tables)
    except BaseException:
        if owns_engine:  # a failed configure() must not leak the pooled connections it opened
            engine.dispose()
        raise

    sinks: list[Sink] = [DatabaseSink(engine, prefix_tables, owns_engine=owns_engine)]
    if posthog is not None:
        sinks.append(PostHogSink(posthog))
    if otel_logs is not None:
        from obs_sdk._otel import OtelLogSink

        sinks.append(OtelLogSink(otel_logs))

    if dispatcher.configured:
        dispatcher.shutdown(timeout=5.0)  # deliver what the previous configuration queued
    _guard.reset()
    _records.settings = _records.Settings(
        service=service,
        redactor=Redactor(redact_keys),
        max_metadata_bytes=max_metadata_bytes,
        clock=clock or _records.Settings.clock,
        id_factory=id_factory or _records.uuid7,
        person_properties=person_properties,
        require_actor=require_actor,
    )
    _emit.clock = _records.settings.clock
    _context.provider = scope_provider
    _tx.table_prefix = table_prefix
    _emit.events_wanted = any(sink.kinds & {"event"} for sink in sinks)
    dispatcher.set_lanes(audits=scope_provider is None, events=_emit.events_wanted)
    _current = Config(
        engine=engine,
        async_engine=async_engine,
        table_prefix=table_prefix,
        posthog=posthog,
        storage_quota=storage_quota,
        audit_storage=audit_storage,
        idempotency_retention=idempotency_retention,
    )
    dispatcher.install(sinks, queue_size)
    _register_atexit()


def _prepare(engine: Engine, prefix: str, *, create: bool) -> None:
    # configure()'s create_tables flag shadows the function of the same name there.
    if not create:
        check_schema(engine, prefix)
        return
    try:
        create_tables(engine, prefix)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"obs_sdk could not create its tables in {engine.url!r}: {exc}"
        ) from exc


def _register_atexit() -> None:
    # Registered (again) after the PostHog client exists: atexit runs hooks last-in first-out,
    # so ours hands the events over before posthog's own bounded exit flush.
    global _atexit_registered
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)
    _atexit_registered = True


def _at_exit() -> None:
    if dispatcher.configured:
        if not shutdown(timeout=5.0):
            logger.warning("obs_sdk: not every record was delivered at exit: %s", stats())
    elif dispatcher.queue:
        logger.warning(
            "obs_sdk: %d records were never delivered because obs.configure() was never called",
            len(dispatcher.queue),
        )


atexit.register(_at_exit)  # the never-configured warning; configure() re-registers it


def flush(timeout: float = 5.0) -> bool:
    """Deliver everything queued (PostHog: handed over and flushed) within *timeout* seconds.

    Returns True when everything was delivered. Thread-safe; blocks the caller.
    """
    return dispatcher.flush(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """Flush, then stop the worker and the sinks; also runs at interpreter exit.

    Never shuts down the app's PostHog client (it is flushed). After it, records wait in
    the queue again until the next configure(). Returns True when everything was delivered.
    """
    global _current
    done = dispatcher.shutdown(timeout)
    _current = Config()
    _emit.events_wanted = True
    return done


def stats() -> dict[str, Any]:
    """Return the counters since the last configure().

    Keys: submitted, queued, delivered, dropped, failed, retried, internal_errors, by_sink,
    and the outcomes that are not errors but must not pass unseen, among them
    ``no_actor`` (records filed anonymous because no actor was in scope). Invariant:
    submitted == queued + delivered + dropped + failed. Records written at a
    transaction's commit go straight to its database and are not counted here.
    """
    return dispatcher.stats()


def posthog_on_error(error: Exception, batch: list[Any]) -> None:
    """Pass as ``posthog.Posthog(on_error=obs.posthog_on_error)``: upload failures are counted."""
    dispatcher.count_upload_failure("posthog", len(batch) if batch else 1)
    _guard.count_error("posthog_upload", error)
