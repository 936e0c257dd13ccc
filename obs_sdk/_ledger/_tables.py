"""SQLAlchemy Table definitions for the obs_ tables (prefix-aware), and their creation."""

from __future__ import annotations

import datetime
import functools
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
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

from obs_sdk._delivery._redact import to_json
from obs_sdk.exceptions import ConfigurationError

__all__ = ["SCHEMA_VERSION", "Tables", "create_tables", "metadata", "tables"]

# 1: the first tables. 2: obs_audit_log.changes (what a call wrote, issue 17).
SCHEMA_VERSION = 3

# Indexes of version 1 that a newer one replaced by (key, occurred_at, id): dropped when an
# older database is migrated (a new database never has them).
SUPERSEDED_INDEXES = ("audit_org_idx", "audit_ws_idx", "audit_actor_idx", "audit_resource_idx")
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
        # SQLite reads back the naive UTC text stored above; PostgreSQL an aware datetime.
        utc = datetime.timezone.utc
        return value.replace(tzinfo=utc) if value.tzinfo is None else value.astimezone(utc)


class JSONValue(TypeDecorator[Any]):
    """JSON (JSONB on PostgreSQL) holding what obs_sdk's own encoder writes, on every path.

    The SQL sinks send JSON text made by ``to_json`` (datetimes as ISO text, Decimals and
    UUIDs as strings, like every other sink); an insert through SQLAlchemy (a record held to
    its transaction's commit, ``record_audit_now``) would go through ``json.dumps``, which
    refuses a datetime, and the record would leave its transaction for the queue.
    ``none_as_null``: None is SQL NULL (SQLAlchemy would store JSON 'null' where the sinks
    store NULL).
    """

    impl = JSON
    cache_ok = True

    def __init__(self, none_as_null: bool = False) -> None:
        super().__init__(none_as_null=none_as_null)
        self.none_as_null = none_as_null

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=self.none_as_null))
        return dialect.type_descriptor(JSON(none_as_null=self.none_as_null))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(to_json(value))


@dataclass(frozen=True)
class Tables:
    """The obs_ tables of one prefix."""

    metadata: MetaData
    audit: Table
    storage_usage: Table
    storage_objects: Table
    idempotency_keys: Table
    schema_version: Table
    # Ledger integrity (issue 18): see _ledger_tables() below.
    seals: Table
    seal_leaves: Table
    seal_purges: Table


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
        Column("metadata", JSONValue(), nullable=False),
        Column("error_type", String(255)),
        Column("changes", JSONValue(none_as_null=True)),  # schema version 2
    )
    # What people ask an audit log: the whole trail, an organization's or workspace's, one
    # actor's actions, one resource's history; each over time. audit_log orders by
    # (occurred_at, id), so (key, occurred_at, id) serves "since/until", the order (either
    # way) and keyset pagination with one index, without a sort.
    at = (audit.c.occurred_at, audit.c.id)
    Index(f"{prefix}audit_time_idx", *at)
    Index(f"{prefix}audit_org_time_idx", audit.c.organization_id, *at)
    Index(f"{prefix}audit_ws_time_idx", audit.c.workspace_id, *at)
    Index(f"{prefix}audit_actor_time_idx", audit.c.actor_id, *at)
    Index(f"{prefix}audit_resource_time_idx", audit.c.resource_type, audit.c.resource_id, *at)
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
    return Tables(md, audit, usage, objects, keys, version, *_ledger_tables(md, prefix))


# -- Ledger integrity (issue 18): seals, their leaves and purges ------------------------------
# Additive only: new tables, nothing changed in the others, so writers stay as they are. The
# sealer fills them after the fact; a record is "unsealed" while it has no leaf row.


def _ledger_tables(md: MetaData, prefix: str) -> tuple[Table, Table, Table]:
    seals = Table(
        f"{prefix}seals",
        md,
        # One signed Merkle root per seal, chained: prev_root is the previous seal's root.
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("sealed_at", UTCDateTime(), nullable=False),
        Column("key_id", String(64), nullable=False),
        Column("prev_root", String(64), nullable=False),
        Column("root", String(64), nullable=False),
        Column("size", Integer, nullable=False),
        Column("purged_through", Integer, nullable=False),
        Column("signature", String(128), nullable=False),
    )
    leaves = Table(
        f"{prefix}seal_leaves",
        md,
        # record id -> its seal and place in that seal's tree. The leaf hash is kept, so a
        # seal's root can be recomputed (and proofs made) after a record is purged, and a
        # deleted record is told from one never sealed.
        Column("record_id", Uuid(as_uuid=True), primary_key=True),
        Column("seal_seq", Integer, nullable=False),
        Column("position", Integer, nullable=False),
        Column("leaf_hash", LargeBinary(32), nullable=False),
        Column("organization_id", String(255)),
        # The personal fields' commitments, kept here once erase_actor() removed the values.
        Column("commitments", JSONValue()),
        # The salt of the personal fields' commitments (NULL without personal fields);
        # erase_actor() sets it NULL with the values. In this row, not a table of its own:
        # one insert per record, and verify reads it without a join.
        Column("salt", LargeBinary(32)),
    )
    Index(f"{prefix}seal_leaves_seal_idx", leaves.c.seal_seq, leaves.c.position, unique=True)
    Index(f"{prefix}seal_leaves_org_idx", leaves.c.organization_id, leaves.c.record_id)
    purges = Table(
        f"{prefix}seal_purges",
        md,
        # Each retention run: the seals whose records it deleted (1..through_seal). The next
        # seal signs the highest through_seal, so a purge is told from a deletion.
        Column("id", Integer, primary_key=True),
        Column("through_seal", Integer, nullable=False),
        Column("cutoff", UTCDateTime(), nullable=False),
        Column("purged_at", UTCDateTime(), nullable=False),
        Column("records", Integer, nullable=False),
    )
    return seals, leaves, purges


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
    """Bring the obs_ tables to this version: create what is missing, migrate what is older.

    When the schema version table already holds this version, one SELECT of it is all
    that runs: no DDL and no lock beyond that read, so a process starting beside live
    transactions on the obs_ tables neither waits for them nor deadlocks with them.
    Otherwise (a fresh database, tables made from ``metadata()`` without a version row, or
    tables of an older version) the missing tables, columns and indexes are created and the
    version is recorded: only what is missing, so existing tables are locked for DDL only
    when a column must be added (version 1 to 2 adds ``obs_audit_log.changes``; 2 to 3 adds
    the seal tables, ``obs_seal*``). Safe when several processes start at once: PostgreSQL
    serialises creators with a transaction-scoped advisory lock, SQLite with its write lock,
    and every statement tolerates what another process already did.

    configure() calls it (unless ``create_tables=False``); call it yourself at deploy
    time to prepare the database for ``configure(create_tables=False)``. Given a
    Connection, it runs in the caller's transaction and skips the read-only check.

    Raises:
        ConfigurationError: the tables are at a newer schema version than this obs_sdk.
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
    _check_version(found, t, older_ok=True)
    return bool(found) and max(found) == SCHEMA_VERSION


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
        _check_version(found, t, older_ok=True)
    for table in t.metadata.sorted_tables:
        if table.name in existing:
            _add_missing_columns(conn, inspector, table)
            # CREATE INDEX IF NOT EXISTS still takes a SHARE lock on the table (it waits
            # for every writing transaction): only run it for an index that is missing.
            have = {index["name"] for index in inspector.get_indexes(table.name)}
        else:
            conn.execute(CreateTable(table, if_not_exists=True))
            have = set()
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in have:
                conn.execute(CreateIndex(index, if_not_exists=True))
    if found:
        if max(found) != SCHEMA_VERSION:  # one row, moved to this version
            for name in SUPERSEDED_INDEXES:  # every insert paid for them
                conn.execute(text(f'DROP INDEX IF EXISTS "{prefix}{name}"'))
            conn.execute(t.schema_version.update().values(version=SCHEMA_VERSION))
    else:
        conn.execute(
            insert_ignoring_duplicates(t.schema_version, conn.dialect.name, "version"),
            {"version": SCHEMA_VERSION},
        )


def _add_missing_columns(conn: Connection, inspector: Any, table: Table) -> None:
    """Add the columns a newer version gave *table* (all nullable: no default to backfill).

    ``ALTER TABLE ... ADD COLUMN`` of a nullable column without a default rewrites no rows
    on PostgreSQL or SQLite, but on PostgreSQL it waits for the transactions using the
    table (an ACCESS EXCLUSIVE lock, held for an instant): it runs only when one is missing.
    """
    have = {column["name"] for column in inspector.get_columns(table.name)}
    preparer = conn.dialect.identifier_preparer
    for column in table.columns:
        if column.name in have:
            continue
        kind = column.type.compile(dialect=conn.dialect)
        name, quoted_table = preparer.quote(column.name), preparer.quote(table.name)
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE {quoted_table} ADD COLUMN IF NOT EXISTS {name} {kind}"))
            continue
        try:
            conn.execute(text(f"ALTER TABLE {quoted_table} ADD COLUMN {name} {kind}"))
        except DBAPIError as exc:  # SQLite has no IF NOT EXISTS here: another process added it
            if "duplicate column" not in str(exc).lower():
                raise


def _check_version(found: Sequence[int], t: Tables, *, older_ok: bool = False) -> None:
    if not found or max(found) == SCHEMA_VERSION or (older_ok and max(found) < SCHEMA_VERSION):
        return
    if max(found) < SCHEMA_VERSION:
        raise ConfigurationError(
            f"the obs_ tables are at schema version {max(found)}, this obs_sdk needs "
            f"{SCHEMA_VERSION}; migrate them: obs.create_tables(engine) (or configure() with "
            "create_tables=True) adds what is missing, or run an Alembic migration "
            "autogenerated against obs.metadata() and record the new version in "
            + t.schema_version.name
        )
    raise ConfigurationError(
        f"the obs_ tables are at schema version {max(found)}, this obs_sdk needs "
        f"{SCHEMA_VERSION}: a newer obs_sdk migrated them; upgrade obs_sdk here too "
        "(the tables cannot be migrated back)"
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
