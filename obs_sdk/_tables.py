"""SQLAlchemy Table definitions for the obs_ tables (prefix-aware), and their creation."""

from __future__ import annotations

import datetime
import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.expression import Insert
from sqlalchemy.types import TypeDecorator

from obs_sdk.exceptions import ConfigurationError

__all__ = ["SCHEMA_VERSION", "Tables", "create_tables", "metadata", "tables"]

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "obs_"


class UTCDateTime(TypeDecorator[datetime.datetime]):
    """A timestamp stored in UTC that always reads back as an aware datetime.

    SQLite has no time zones: SQLAlchemy stores naive text there and reads it back naive.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("obs_sdk stores aware datetimes only")
        value = value.astimezone(datetime.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)


_JSON = JSON().with_variant(JSONB(), "postgresql")


@dataclass(frozen=True)
class Tables:
    """The obs_ tables of one prefix."""

    metadata: MetaData
    audit: Table
    storage_usage: Table
    storage_objects: Table
    idempotency_keys: Table
    schema_version: Table


@functools.cache
def tables(prefix: str = DEFAULT_PREFIX) -> Tables:
    """Return the Table objects for *prefix* (cached: one MetaData per prefix)."""
    if not prefix.replace("_", "").isalnum():
        raise ConfigurationError(
            f"table_prefix={prefix!r}: use letters, digits and underscores only (e.g. 'obs_')"
        )
    md = MetaData()
    audit = Table(
        f"{prefix}audit_log",
        md,
        Column("id", Uuid(as_uuid=True), primary_key=True),
        Column("occurred_at", UTCDateTime(), nullable=False),
        Column("action", String(200), nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("actor_type", String(16), nullable=False),
        Column("actor_id", String(255)),
        Column("actor_name", String(255)),
        Column("actor_email", String(320)),
        Column("resource_type", String(100)),
        Column("resource_id", String(255)),
        Column("resource_name", Text),
        Column("workspace_id", String(255)),
        Column("organization_id", String(255)),
        Column("ip", String(64)),
        Column("user_agent", Text),
        Column("request_id", String(128)),
        Column("trace_id", String(32)),
        Column("span_id", String(16)),
        Column("service", String(128)),
        Column("metadata", _JSON, nullable=False),
        Column("error_type", String(255)),
    )
    # What people ask an audit log: the whole trail, an organization's or workspace's, one
    # actor's actions, one resource's history; each over time. audit_log orders by
    # (occurred_at, id), so (key, occurred_at, id) serves "since/until", the order (either
    # way) and keyset pagination with one index, without a sort.
    at = (audit.c.occurred_at, audit.c.id)
    Index(f"{prefix}audit_time_idx", *at)
    Index(f"{prefix}audit_org_idx", audit.c.organization_id, *at)
    Index(f"{prefix}audit_ws_idx", audit.c.workspace_id, *at)
    Index(f"{prefix}audit_actor_idx", audit.c.actor_id, *at)
    Index(f"{prefix}audit_resource_idx", audit.c.resource_type, audit.c.resource_id, *at)
    usage = Table(
        f"{prefix}storage_usage",
        md,
        Column("owner", String(255), primary_key=True),
        Column("bytes", BigInteger, nullable=False),
    )
    objects = Table(
        f"{prefix}storage_objects",
        md,
        Column("object_id", String(255), primary_key=True),
        Column("owner", String(255), nullable=False, index=True),
        Column("bytes", BigInteger, nullable=False),
        Column("charged_at", UTCDateTime(), nullable=False),
    )
    keys = Table(
        f"{prefix}idempotency_keys",
        md,
        Column("key", String(255), primary_key=True),
        Column("created_at", UTCDateTime(), nullable=False, index=True),
    )
    version = Table(
        f"{prefix}schema_version",
        md,
        Column("version", Integer, primary_key=True),
    )
    return Tables(md, audit, usage, objects, keys, version)


def metadata(prefix: str = DEFAULT_PREFIX) -> MetaData:
    """Return the SQLAlchemy MetaData of the obs_ tables, e.g. for Alembic autogenerate."""
    return tables(prefix).metadata


def insert_ignoring_duplicates(table: Table, dialect_name: str, key: str = "id") -> Insert:
    """An INSERT that skips rows whose *key* exists (``ON CONFLICT DO NOTHING``)."""
    if dialect_name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect_name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
    return insert(table).prefix_with("IGNORE")  # MySQL/MariaDB spelling


def create_tables(engine: Engine | Connection, prefix: str = DEFAULT_PREFIX) -> None:
    """Bring the obs_ tables to this version: create what is missing, nothing else.

    When the schema version table already holds this version, one SELECT of it is all
    that runs: no DDL and no lock beyond that read, so a process starting beside live
    transactions on the obs_ tables neither waits for them nor deadlocks with them.
    Otherwise (a fresh database, or tables made from ``metadata()`` without a version
    row) the missing tables and indexes are created and the version is recorded: only
    what is missing, so existing tables are never locked for DDL. Safe when several
    processes start at once: PostgreSQL serialises creators with a transaction-scoped
    advisory lock, SQLite with its write lock, and every statement says IF NOT EXISTS.

    configure() calls it (unless ``create_tables=False``); call it yourself at deploy
    time to prepare the database for ``configure(create_tables=False)``. Given a
    Connection, it runs in the caller's transaction and skips the read-only check.

    Raises:
        ConfigurationError: the tables are at another schema version (migrate them).
    """
    t = tables(prefix)
    if isinstance(engine, Connection):
        _create(engine, t, prefix)
        return
    if _schema_is_current(engine, t):
        return
    with engine.begin() as conn:
        _create(conn, t, prefix)


def _schema_is_current(engine: Engine, t: Tables) -> bool:
    """Return True when the version table holds this version (one SELECT, nothing else)."""
    try:
        with engine.connect() as conn:
            found = conn.execute(select(t.schema_version.c.version)).scalars().all()
    except DBAPIError:
        # No version table yet. An unreachable database fails again, and says so, in
        # the create path that follows.
        return False
    _check_version(found, t)
    return bool(found)


def _create(conn: Connection, t: Tables, prefix: str) -> None:
    if conn.dialect.name == "postgresql":
        lock_id = zlib.crc32(f"obs_sdk:{prefix}".encode())
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
    # Read after the lock: another process may have created everything meanwhile.
    inspector = inspect(conn)
    existing = set(inspector.get_table_names())
    found: list[int] = []
    if t.schema_version.name in existing:
        found = list(conn.execute(select(t.schema_version.c.version)).scalars().all())
        _check_version(found, t)
    for table in t.metadata.sorted_tables:
        if table.name in existing:
            # CREATE INDEX IF NOT EXISTS still takes a SHARE lock on the table (it waits
            # for every writing transaction): only run it for an index that is missing.
            have = {index["name"] for index in inspector.get_indexes(table.name)}
        else:
            conn.execute(CreateTable(table, if_not_exists=True))
            have = set()
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in have:
                conn.execute(CreateIndex(index, if_not_exists=True))
    if not found:
        conn.execute(
            insert_ignoring_duplicates(t.schema_version, conn.dialect.name, "version"),
            {"version": SCHEMA_VERSION},
        )


def _check_version(found: Sequence[int], t: Tables) -> None:
    if found and max(found) != SCHEMA_VERSION:
        raise ConfigurationError(
            f"the obs_ tables are at schema version {max(found)}, this obs_sdk needs "
            f"{SCHEMA_VERSION}; migrate them (Alembic: autogenerate against obs.metadata()) "
            "and record the new version in " + t.schema_version.name
        )


def check_schema(engine: Engine | Connection, prefix: str = DEFAULT_PREFIX) -> None:
    """Fail with a migration hint when the database holds another schema version."""
    t = tables(prefix)
    try:
        if isinstance(engine, Connection):
            found = engine.execute(select(t.schema_version.c.version)).scalars().all()
        else:
            with engine.connect() as conn:
                found = conn.execute(select(t.schema_version.c.version)).scalars().all()
    except Exception as exc:
        raise ConfigurationError(
            f"obs_sdk could not read {t.schema_version.name} ({type(exc).__name__}: {exc}); "
            "create the tables with obs.create_tables(engine), configure(create_tables=True), "
            "or an Alembic migration built from obs.metadata()"
        ) from exc
    _check_version(found, t)
