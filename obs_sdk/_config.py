"""configure, flush, shutdown, stats: the process-wide configuration and its lifecycle."""

from __future__ import annotations

import atexit
import datetime
import inspect
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from obs_sdk import _guard
from obs_sdk._delivery import _lifecycle, _posthog_log
from obs_sdk._delivery._dispatch import (
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_QUEUE_SIZE,
    OVERFLOW_MODES,
    Limits,
    dispatcher,
)
from obs_sdk._delivery._redact import Redactor
from obs_sdk._delivery._sinks import SQLITE_BUSY_MS, DatabaseSink, PostHogSink, Sink
from obs_sdk._hotpath import _records
from obs_sdk._hotpath._records import DEFAULT_MAX_CHANGES_BYTES, DEFAULT_MAX_METADATA_BYTES, uuid7
from obs_sdk._hotpath._runtime import runtime
from obs_sdk._ledger._tables import DEFAULT_PREFIX, check_schema, create_tables, tables
from obs_sdk._seals._sealer import BackgroundSealer, check_seal_settings
from obs_sdk._stats import Stats
from obs_sdk.exceptions import ConfigurationError

__all__ = ["configure", "current", "flush", "posthog_on_error", "shutdown", "stats"]

logger = logging.getLogger("obs_sdk")

DEFAULT_DATABASE = "sqlite:///obs.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 30


SHUTDOWN_TIMEOUT_SECONDS = 5.0
MAX_BLOCK_TIMEOUT_SECONDS = 60  # reconfigure, interpreter exit and SIGTERM flush this long


@dataclass(frozen=True)
class Config:
    """Everything one configure() call decided: the one configuration object.

    configure() builds one and swaps it in whole; shutdown() swaps in the defaults
    (``Config()``). Storage, once() and the store read it through ``current()``, rendering
    through ``_records.config`` (the same object), the dispatcher through its ``limits``.
    Immutable: a reader holding it never sees half of a reconfiguration.
    """

    engine: Engine | None = None
    async_engine: AsyncEngine | None = None
    table_prefix: str = DEFAULT_PREFIX
    posthog: Any = None
    storage_quota: int | Callable[[str], int | None] | None = None
    audit_storage: bool = False
    idempotency_retention: datetime.timedelta = datetime.timedelta(days=30)
    service: str | None = None
    redactor: Redactor = field(default_factory=Redactor)
    redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_changes_bytes: int = DEFAULT_MAX_CHANGES_BYTES
    scope_provider: Callable[[], Mapping[str, Any]] | None = None
    require_actor: bool = False
    person_properties: bool = False
    clock: Callable[[], int] = time.time_ns
    id_factory: Callable[[int], uuid.UUID] = uuid7
    otel_logs: bool = False
    console: bool = False
    handle_signals: bool = False
    limits: Limits = field(default_factory=Limits)

    @property
    def events_wanted(self) -> bool:
        """Whether analytics events have somewhere to go (PostHog, OTel logs, the console)."""
        return self.events_sent or self.console

    @property
    def events_sent(self) -> bool:
        """Whether analytics events leave the process (PostHog or OTel logs)."""
        return self.posthog is not None or self.otel_logs


_current = Config()
_atexit_registered = False


def current() -> Config:
    """Return the active configuration (defaults before the first configure())."""
    return _current


def _swap(config: Config) -> None:
    """Make *config* the configuration of every module that reads one.

    ``_records.config`` (rendering) is this object. The three values the caller's thread
    reads per call go to ``_runtime.runtime``, the one object the hot path and the scope
    are given explicitly (see there). Before configure() (no engine), analytics count as
    wanted, as they always have.
    """
    global _current
    _current = config
    _records.config = config
    wanted = config.events_wanted if config.engine is not None else True
    runtime.apply(config.clock, wanted, config.scope_provider)


def _sqlite_pragmas(busy_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout turns lock contention into a wait instead of "database is
            # locked"; WAL lets readers run beside the one writer.
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            _switch_to_wal(cursor, deadline=time.monotonic() + busy_ms / 1000)
        finally:
            cursor.close()

    return on_connect


def _switch_to_wal(cursor: Any, *, deadline: float) -> None:
    """Put the file in WAL mode, waiting for other processes doing the same.

    Switching a file's journal mode takes its exclusive lock, and SQLite refuses a second
    connection asking for it at once, without calling the busy handler: workers starting
    together on a fresh file would fail configure(). So wait here, up to the busy timeout.
    A file already in WAL mode answers at once.
    """
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError; sqlite3 is not imported here
            if "database is locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _engine_for_url(url: str, *, busy_ms: int = SQLITE_BUSY_TIMEOUT_SECONDS * 1000) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # One shared connection: every pooled connection would otherwise be its own database.
        return create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    engine = create_engine(parsed, connect_args={"timeout": busy_ms / 1000})
    event.listen(engine, "connect", _sqlite_pragmas(busy_ms))
    return engine


def _write_engine(engine: Engine, owned: bool) -> Engine | None:
    """The SQL sink's own engine for an obs_sdk-owned SQLite file (see _sinks.SQLITE_BUSY_MS)."""
    if not owned or engine.dialect.name != "sqlite":
        return None
    if engine.url.database in (None, "", ":memory:"):
        return None
    return _engine_for_url(engine.url.render_as_string(hide_password=False), busy_ms=SQLITE_BUSY_MS)


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


def _check_limits(
    queue_size: object, max_queue_bytes: object, overflow: object, block_timeout: object
) -> Limits:
    size = _check_int("queue_size", queue_size, 1)
    max_bytes = _check_int("max_queue_bytes", max_queue_bytes, 64 * 1024)
    if overflow not in OVERFLOW_MODES:
        raise ConfigurationError(
            f'configure(overflow=...) is "drop" (a full queue drops the newest record) or '
            f'"block" (callers wait up to block_timeout for room first), got {overflow!r}'
        )
    if (
        isinstance(block_timeout, bool)
        or not isinstance(block_timeout, (int, float))
        or not math.isfinite(block_timeout)
        or not 0 <= block_timeout <= MAX_BLOCK_TIMEOUT_SECONDS
    ):
        raise ConfigurationError(
            "configure(block_timeout=...) takes the seconds a caller may wait for room (a "
            f"number from 0 to {MAX_BLOCK_TIMEOUT_SECONDS}; default {DEFAULT_BLOCK_TIMEOUT}), "
            f"got {block_timeout!r}"
        )
    return Limits(size, max_bytes, str(overflow), float(block_timeout))


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"configure({name}=...) takes True or False, got {value!r}")
    return value


CONSOLE_ENV = "OBS_SDK_CONSOLE"
_ENV_TRUE = ("1", "true", "yes", "on")
_ENV_FALSE = ("", "0", "false", "no", "off")


def _console_wanted(console: object) -> bool:
    """configure(console=True), or OBS_SDK_CONSOLE=1 in the environment."""
    _check_bool("console", console)
    value = os.environ.get(CONSOLE_ENV, "").strip().lower()
    if value not in _ENV_TRUE + _ENV_FALSE:
        raise ConfigurationError(
            f"{CONSOLE_ENV}={os.environ[CONSOLE_ENV]!r}: set it to 1 to print every record "
            "and event on stderr, or 0 (or unset it) for no console view"
        )
    return bool(console) or value in _ENV_TRUE


def configure(
    database: str | Engine | AsyncEngine = DEFAULT_DATABASE,
    posthog: Any = None,
    service: str | None = None,
    storage_quota: int | Callable[[str], int | None] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    table_prefix: str = DEFAULT_PREFIX,
    create_tables: bool = True,
    redact_keys: Iterable[str] = (),
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    audit_storage: bool = False,
    idempotency_retention: datetime.timedelta = datetime.timedelta(days=30),
    otel_logs: Any = None,
    scope_provider: Callable[[], Mapping[str, Any]] | None = None,
    *,
    require_actor: bool = False,
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    overflow: str = "drop",
    block_timeout: float = DEFAULT_BLOCK_TIMEOUT,
    handle_signals: bool = True,
    keep_keys: Iterable[str] = (),
    redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    person_properties: bool = False,
    seal_key: Any = None,
    seal_every: float | datetime.timedelta | None = None,
    console: bool = False,
    clock: Callable[[], int] | None = None,
    id_factory: Callable[[int], Any] | None = None,
    max_changes_bytes: int = DEFAULT_MAX_CHANGES_BYTES,
) -> None:
    """Configure obs_sdk for this process: where records go and how they are shaped.

    Creates the missing obs_ tables (safe when several processes start at once) unless
    ``create_tables=False``, in which case the schema version is checked. Calling it again
    flushes the previous configuration and replaces it; after ``shutdown()`` it starts
    afresh. Records made before the first call wait in the bounded queue.

    Delivery: each sink (the database, PostHog, OpenTelemetry logs) has its own queue and
    worker thread, so a database outage delays no analytics event and a slow PostHog no
    audit row. The callers' records enter one intake first, then each sink's queue. Each
    holds at most ``queue_size`` records, and one sink's delivery (its queue, its batch in
    export, and the intake's share) at most about ``max_queue_bytes`` bytes (default
    64 MiB), whatever the records' size. When one is full, ``overflow="drop"`` (default)
    drops the newest record; ``"block"`` lets the caller wait up to ``block_timeout``
    seconds (default 0.05) for room first, for compliance needs where a slower call beats a
    lost record. Either way a drop is counted (``stats()["dropped"]``, and
    ``["by_sink"]`` for a sink's queue) and logged: a WARNING at the first drop, then at
    most one per sink every 10 s, with the count and the reason.

    ``handle_signals=True`` (default) flushes the queues (within 5 s) when the process gets
    SIGTERM, then terminates as the signal would have; an application's own SIGTERM handler
    is chained, not replaced. Pass False to leave signals alone.

    A record made with no actor in scope is filed anonymous and counted in
    ``stats()["no_actor"]`` (audit records, and analytics events sent with
    ``allow_anonymous``). ``require_actor=True`` also logs a WARNING on the "obs_sdk"
    logger naming the action, once per action, for code that should always run with an
    actor (behind authentication, in jobs that set one).

    Redaction: ``redact_keys`` adds words that mark a key secret, ``keep_keys`` names keys
    never redacted, and ``redact`` (a function taking the cleaned metadata or properties
    dict and returning the dict to send) runs last, on the dispatcher thread.

    ``max_changes_bytes`` (default 64 KiB) bounds the JSON of a record's ``changes`` (the
    rows a call made with ``changes=`` wrote) the way ``max_metadata_bytes`` bounds its
    metadata: long strings are cut with the same marker, then the last rows are left out
    and counted; the record is always kept.

    ``seal_key`` (an Ed25519 private key) with ``seal_every`` (seconds or a timedelta)
    seals the audit trail in the background on a thread of obs_sdk's own, one process at
    a time (see ``obs.seal``); needs ``cryptography`` (``obs-sdk[seal]``).

    ``console=True`` (or ``OBS_SDK_CONSOLE=1`` in the environment) prints every audit record
    and analytics event on stderr as it is delivered, one line each, coloured when rich is
    installed (the ``console`` extra): for development. It has its own queue, so a slow
    terminal never delays the database or PostHog.

    ``person_properties=True`` adds the actor's name and email as ``$set`` to analytics
    events. ``clock`` (ns since the epoch) and ``id_factory`` are for deterministic tests
    (``obs_sdk.testing.SteppingClock`` and ``IncrementingIds``).

    Raises:
        ConfigurationError: an argument is wrong or the database cannot be prepared; the
            message says what to fix. Not thread-safe: call it once at startup.
    """
    _check_posthog(posthog)
    limits = _check_limits(queue_size, max_queue_bytes, overflow, block_timeout)
    max_metadata_bytes = _check_int("max_metadata_bytes", max_metadata_bytes, 256)
    max_changes_bytes = _check_int("max_changes_bytes", max_changes_bytes, 256)
    if storage_quota is not None and not callable(storage_quota):
        _check_int("storage_quota", storage_quota, 0)
    _check_bool("require_actor", require_actor)
    _check_bool("handle_signals", handle_signals)
    _check_bool("person_properties", person_properties)
    sealing = check_seal_settings(seal_key, seal_every)
    console = _console_wanted(console)
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
    redactor = Redactor(redact_keys, keep_keys=keep_keys, redact=redact)
    prefix_tables = tables(table_prefix)  # validates the prefix
    engine, async_engine, owns_engine = _engines(database)
    try:
        _prepare(engine, table_prefix, create=create_tables)
    except BaseException:
        if owns_engine:  # a failed configure() must not leak the pooled connections it opened
            engine.dispose()
        raise

    sinks: list[Sink] = [
        DatabaseSink(
            engine,
            prefix_tables,
            owns_engine=owns_engine,
            write_engine=_write_engine(engine, owns_engine),
        )
    ]
    if posthog is not None:
        sinks.append(PostHogSink(posthog))
    if otel_logs is not None:
        from obs_sdk._delivery._otel import OtelLogSink

        sinks.append(OtelLogSink(otel_logs))
    if console:
        from obs_sdk._delivery._console import ConsoleSink

        events_elsewhere = posthog is not None or otel_logs is not None
        sinks.append(ConsoleSink(unsent_events=not events_elsewhere))

    _stop_sealer(SHUTDOWN_TIMEOUT_SECONDS)
    if dispatcher.sinks:
        dispatcher.shutdown(SHUTDOWN_TIMEOUT_SECONDS)  # deliver what the previous one queued
    _guard.reset()
    config = Config(
        engine=engine,
        async_engine=async_engine,
        table_prefix=table_prefix,
        posthog=posthog,
        storage_quota=storage_quota,
        audit_storage=audit_storage,
        idempotency_retention=idempotency_retention,
        service=service,
        redactor=redactor,
        redact=redact,
        max_metadata_bytes=max_metadata_bytes,
        max_changes_bytes=max_changes_bytes,
        scope_provider=scope_provider,
        require_actor=require_actor,
        person_properties=person_properties,
        clock=clock or time.time_ns,
        id_factory=id_factory or uuid7,
        otel_logs=otel_logs is not None,
        console=console,
        handle_signals=handle_signals,
        limits=limits,
    )
    _swap(config)
    dispatcher.install(sinks, limits, fast_lane=scope_provider is None)
    _start_sealer(engine, table_prefix, sealing)
    _register_atexit()
    _lifecycle.uninstall_signal_handlers()
    if handle_signals:
        _lifecycle.install_signal_handlers(flush, SHUTDOWN_TIMEOUT_SECONDS)


_sealer: BackgroundSealer | None = None


def _start_sealer(engine: Engine, prefix: str, sealing: tuple[Any, float] | None) -> None:
    global _sealer
    if sealing is not None:
        _sealer = BackgroundSealer(engine, prefix, *sealing)
        _sealer.start()


def _stop_sealer(timeout: float) -> None:
    global _sealer
    if _sealer is not None:
        _sealer.stop(timeout)
        _sealer = None


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
    if dispatcher.sinks:
        if not shutdown(timeout=SHUTDOWN_TIMEOUT_SECONDS):
            logger.warning("obs_sdk: not every record was delivered at exit: %s", stats())
    elif dispatcher.queue:
        logger.warning(
            "obs_sdk: %d records were never delivered because obs.configure() was never called",
            len(dispatcher.queue),
        )


atexit.register(_at_exit)  # the never-configured warning; configure() re-registers it


def flush(timeout: float = 5.0) -> bool:
    """Deliver everything queued (PostHog: handed over and flushed) within *timeout* seconds.

    Returns True when everything was delivered: False while a record is still queued, or
    while the PostHog client still holds events it was handed (its own queue). Thread-safe;
    blocks the caller.
    """
    return dispatcher.flush(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """Flush, then stop the threads and the sinks; also runs at interpreter exit.

    Never shuts down the app's PostHog client (it is flushed). Resets the configuration to
    the defaults and removes the SIGTERM handler. After it, records wait in the queue again
    until the next configure(). Returns True when everything was delivered.
    """
    started = time.monotonic()
    done = dispatcher.shutdown(timeout)
    _stop_sealer(max(0.0, timeout - (time.monotonic() - started)))
    if _current.handle_signals:
        _lifecycle.uninstall_signal_handlers()
    _swap(Config())
    return done


def stats() -> Stats:
    """Return the counters since the last configure(), as an ``obs.Stats`` dict.

    Keys: submitted, queued, delivered, dropped, failed, retried, internal_errors, by_sink,
    and the outcomes that are not errors but must not pass unseen, among them
    ``no_actor`` (records filed anonymous because no actor was in scope) and ``sanitized``
    (records whose values were changed so that every database stores them); ``obs.Stats``
    says what each key counts. Invariant:
    submitted == queued + delivered + dropped + failed; ``submitted`` is counted as
    records enter, the others where they are now.

    The top-level counts follow each record to its primary sink: the audit log for audit
    records, PostHog for analytics events (else OpenTelemetry logs, else the console).
    Records stored by their own transaction's commit (or ``record_audit_now``) count as
    submitted and delivered at once. ``by_sink[name]`` has each sink's own submitted,
    queued, delivered, dropped, failed, retried and upload_failed, mirrors included.
    """
    return cast(Stats, dispatcher.stats())


def posthog_on_error(error: Exception, batch: list[Any]) -> None:
    """Pass as ``posthog.Posthog(on_error=obs.posthog_on_error)``: upload failures are counted."""
    dispatcher.count_upload_failure("posthog", len(batch) if batch else 1)
    _posthog_log.upload_failed(error)  # a routine outage: one warning line, traceback at DEBUG


_swap(_current)
