"""obs.seal(): put every committed, not yet sealed audit record under a signed Merkle root.

Writers never change and never wait for the sealer: a record is unsealed while it has no
row in ``seal_leaves``, so a record whose transaction commits late (its id older than
records already sealed) is found and sealed by a later seal, never skipped. One sealer
runs at a time per database: a transaction-scoped advisory lock on PostgreSQL, a lock
file beside the database on SQLite (held while reading, so the database's own write lock
is taken only for the short write of the leaves and the seal).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Select, Table, create_engine, func, insert, select, text
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine

from obs_sdk import _config
from obs_sdk._ledger._tables import Tables, tables
from obs_sdk._seals import _merkle
from obs_sdk._seals._canonical import canonical
from obs_sdk._seals._hasher import LeafHasher
from obs_sdk._seals._leaf import row_reader, sealed_leaf_hash
from obs_sdk._seals._signing import key_id, private_key, sign
from obs_sdk.exceptions import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "GENESIS_ROOT",
    "SEAL_VERSION",
    "Ledger",
    "header_bytes",
    "ledger_engine",
    "seal",
    "seal_pending",
    "seal_status",
    "sealing",
]

SEAL_VERSION = 1
GENESIS_ROOT = "0" * 64  # the previous root of the first seal
# Records per seal: bounds one seal's memory and its write transaction; seal() makes as
# many seals as the backlog needs.
MAX_SEAL_SIZE = 100_000
_INSERT_CHUNK = 10_000
# Rows per INSERT on SQLite: 6 columns each stay under its oldest limit of 999 parameters.
_SQLITE_ROWS = 150
SALT_BYTES = 32

_memory_lock = threading.Lock()  # in-memory SQLite: one process, so a thread lock is enough


@dataclass(frozen=True, slots=True)
class Ledger:
    """The engine and tables one ledger operation works on."""

    engine: Engine
    t: Tables


@contextlib.contextmanager
def ledger_engine(bind: Engine | str | None, where: str) -> Iterator[Ledger]:
    """Yield the engine and tables to work on: *bind*, or configure()'s database.

    A URL string gets an engine of its own, disposed afterwards (the CLI's case).
    """
    prefix = _config.current().table_prefix
    if bind is None:
        engine = _config.current().engine
        if engine is None:
            raise ConfigurationError(
                f"{where}: pass bind= (an Engine or a URL), "
                "or call obs.configure(database=...) first"
            )
        yield Ledger(engine, tables(prefix))
    elif isinstance(bind, str):
        engine = create_engine(bind)
        try:
            yield Ledger(engine, tables(prefix))
        finally:
            engine.dispose()
    elif isinstance(bind, Engine):
        yield Ledger(bind, tables(prefix))
    else:
        raise ConfigurationError(
            f"{where}: bind= takes an Engine or a database URL, got {type(bind).__name__}"
        )


def header_bytes(row: Mapping[str, Any]) -> bytes:
    """Return the signed bytes of a seal: the RFC 8785 encoding of its header fields."""
    sealed_at = row["sealed_at"]
    return canonical(
        {
            "v": SEAL_VERSION,
            "seq": row["seq"],
            "sealed_at": sealed_at
            if isinstance(sealed_at, str)
            else sealed_at.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "key_id": row["key_id"],
            "prev_root": row["prev_root"],
            "root": row["root"],
            "size": row["size"],
            "purged_through": row["purged_through"],
        }
    )


@contextlib.contextmanager
def sealing(ledger: Ledger, *, wait: bool = True) -> Iterator[Connection | None]:
    """Hold the sealer lock; yield a connection, or None if it is taken and *wait* is False.

    Sealing, verify, erasure and purges take it, so each sees the ledger tables whole.
    Writers never take it. PostgreSQL: a session advisory lock held by the yielded
    connection (commit on it as often as needed). SQLite: an exclusive lock on the file
    ``<database>-obs-seal.lock`` (a thread lock for an in-memory database).
    """
    engine = ledger.engine
    with contextlib.ExitStack() as stack:
        if engine.dialect.name == "postgresql":
            conn = stack.enter_context(engine.connect())
            lock_id = zlib.crc32(f"obs_sdk:seal:{ledger.t.seals.name}".encode())
            sql = "SELECT pg_advisory_lock(:id)" if wait else "SELECT pg_try_advisory_lock(:id)"
            got = conn.execute(text(sql), {"id": lock_id}).scalar() is not False
            conn.commit()
            if not got:
                yield None
                return
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
                conn.commit()
            return
        if not _file_lock(stack, engine, wait=wait):
            yield None
            return
        yield stack.enter_context(engine.connect())


def _file_lock(stack: contextlib.ExitStack, engine: Engine, *, wait: bool) -> bool:
    path = engine.url.database
    if not path or path == ":memory:":
        if not _memory_lock.acquire(blocking=wait):
            return False
        stack.callback(_memory_lock.release)
        return True
    import fcntl  # POSIX; imported here so that the module loads everywhere

    handle = stack.enter_context(open(f"{path}-obs-seal.lock", "a+b"))  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
    return True


def seal(bind: Engine | str | None = None, *, key: object) -> int:
    """Seal every committed audit record not sealed yet; return how many were sealed.

    Each seal is a Merkle tree (RFC 9162) over its records' leaves (RFC 8785 encodings,
    personal fields as salted commitments), chained to the previous seal's root and
    signed with *key* (an Ed25519 private key: PEM, 32 raw bytes or the key object),
    whose key id it names. Waits for another sealer to finish; writers never wait for it.
    *bind* is an Engine or a URL; by default configure()'s database. Thread-safe.

    Raises:
        ConfigurationError: no database, or *key* is not an Ed25519 private key.
        MissingDependencyError: ``cryptography`` is not installed (``obs-sdk[seal]``).
    """
    signer = private_key(key)
    with ledger_engine(bind, "seal()") as ledger:
        return seal_pending(ledger, signer, wait=True)


def seal_status(
    record_ids: Iterable[object], bind: Engine | str | None = None
) -> dict[uuid.UUID, int]:
    """Return the seal number of each of *record_ids* that is sealed (others are absent).

    For a page of records (e.g. the viewer's): one query. Thread-safe.
    """
    wanted = [r if isinstance(r, uuid.UUID) else uuid.UUID(str(r)) for r in record_ids]
    if not wanted:
        return {}
    with ledger_engine(bind, "seal_status()") as ledger, ledger.engine.connect() as conn:
        leaves = ledger.t.seal_leaves
        found = conn.execute(
            select(leaves.c.record_id, leaves.c.seal_seq).where(leaves.c.record_id.in_(wanted))
        ).all()
    return {record_id: seq for record_id, seq in found}


def seal_pending(ledger: Ledger, signer: Ed25519PrivateKey, *, wait: bool) -> int:
    """Seal the backlog under the sealer lock; 0 when *wait* is False and it is taken."""
    sealed = 0
    with sealing(ledger, wait=wait) as conn:
        if conn is None:
            return 0
        after = None
        while True:
            # Read in one transaction, write in the next: on SQLite the read never has to
            # be upgraded to a write (which fails at once when a writer committed since),
            # and the write lock is held only for the inserts. The sealer lock keeps the
            # ledger tables still in between.
            read = _read(conn, ledger.t, after)
            conn.rollback()
            if read is None:
                return sealed
            header, leaves = _build(conn.dialect, ledger.t, signer, *read)
            _write(conn, ledger.t, header, leaves)
            conn.commit()
            size: int = header["size"]
            sealed += size
            if size < MAX_SEAL_SIZE:  # else more are waiting
                return sealed
            # The next seal of this call reads on from here rather than again from the
            # start: a record that commits meanwhile with a lower id goes in the next call.
            after = leaves[0][-1]


def driver_rows(conn: Connection, query: Select[Any]) -> CursorResult[Any]:
    """Run *query* and return its rows as the driver gives them (no result processing).

    For the ledger's passes over every record: SQLAlchemy's per-value processing (UUIDs,
    datetimes, JSON) cost a fifth of a seal. See ``_leaf.row_reader`` for the values. The
    hot loops fetch from the result's DB-API ``cursor`` itself (tuples, not Rows); the
    statement still runs through the Connection, so its events and transaction hold.
    """
    compiled = query.compile(dialect=conn.dialect)
    params = compiled.params
    if compiled.positional:
        return conn.exec_driver_sql(
            str(compiled), tuple(params[name] for name in compiled.positiontup or ())
        )
    return conn.exec_driver_sql(str(compiled), params)


def _read(
    conn: Connection, t: Tables, after: object = None
) -> tuple[Mapping[str, Any] | None, int, list[Any]] | None:
    """Read the last seal, the purges and up to MAX_SEAL_SIZE unsealed records.

    *after*: only the records whose id is above it, an id in the driver's stored form
    (driver_rows binds it as it is).
    """
    last = conn.execute(select(t.seals).order_by(t.seals.c.seq.desc()).limit(1)).mappings().first()
    purged_through = conn.execute(select(func.max(t.seal_purges.c.through_seal))).scalar() or 0
    audit, leaves = t.audit, t.seal_leaves
    query = (
        select(audit)
        .outerjoin(leaves, leaves.c.record_id == audit.c.id)
        .where(leaves.c.record_id.is_(None))
        .order_by(audit.c.id)
        .limit(MAX_SEAL_SIZE)
    )
    if after is not None:
        query = query.where(audit.c.id > after)
    with driver_rows(conn, query) as result:
        rows = result.cursor.fetchall()  # the driver's tuples: SQLAlchemy's Rows cost more
    if not rows and purged_through <= (last["purged_through"] if last else 0):
        return None
    # Also sealed with no record: a purge since the last seal, so that it gets signed.
    return (dict(last) if last else None), int(purged_through), list(rows)


def _build(
    dialect: Dialect,
    t: Tables,
    signer: Ed25519PrivateKey,
    last: Mapping[str, Any] | None,
    purged_through: int,
    rows: list[Any],
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Return the seal's header and its leaf rows by column (see _write), as stored.

    By column, not a tuple per row: 100,000 more tuples kept cost the garbage collector
    more than building them.
    """
    seq = (last["seq"] if last else 0) + 1
    columns = list(t.audit.columns)
    leaf_hash = LeafHasher(dialect, columns)
    fields_of = row_reader(dialect, columns)  # the reference, for what LeafHasher leaves
    names = [c.name for c in columns]
    id_at, org_at = names.index("id"), names.index("organization_id")
    hashes, salts = [], []
    # One read of the OS's random source for the whole seal (one per record costs more
    # than hashing the record).
    entropy = os.urandom(SALT_BYTES * len(rows))
    for position, row in enumerate(rows):
        salt = None
        if leaf_hash.personal(row):
            salt = entropy[position * SALT_BYTES : (position + 1) * SALT_BYTES]
        digest = leaf_hash(row, salt)
        if digest is None:
            digest = sealed_leaf_hash(fields_of(row), salt)
        hashes.append(digest)
        salts.append(salt)
    header = {
        "seq": seq,
        "sealed_at": datetime.datetime.now(datetime.timezone.utc),
        "key_id": key_id(signer),
        "prev_root": last["root"] if last else GENESIS_ROOT,
        "root": _merkle.root(hashes).hex(),
        "size": len(hashes),
        "purged_through": max(purged_through, last["purged_through"] if last else 0),
    }
    header["signature"] = sign(signer, header_bytes(header))
    # The id as the driver returned it is its stored form (SQLite: 32 hex digits).
    ids, organizations = [row[id_at] for row in rows], [row[org_at] for row in rows]
    return header, [ids, [seq] * len(rows), list(range(len(rows))), hashes, organizations, salts]


def _write(
    conn: Connection,
    t: Tables,
    header: dict[str, Any],
    leaves: list[list[Any]],
) -> None:
    c = t.seal_leaves.c
    columns = [c.record_id, c.seal_seq, c.position, c.leaf_hash, c.organization_id, c.salt]
    _insert_many(conn, t.seal_leaves, columns, leaves)
    conn.execute(insert(t.seals), header)


def _insert_many(
    conn: Connection, table: Table, columns: list[Column[Any]], values: list[list[Any]]
) -> None:
    """Insert rows given by column (*values*: one list per column, as stored) at the driver level.

    SQLAlchemy's per-row parameter processing cost a third of a seal. PostgreSQL takes
    one statement over one array per column (psycopg's executemany adapts row by row),
    each array sent in binary (``%b``: the text form escapes every element with a regex);
    SQLite one multi-row ``VALUES`` per _SQLITE_ROWS rows (a quarter less time than its
    executemany, which steps the statement once per row); others the driver's executemany.
    """
    quote = conn.dialect.identifier_preparer
    names = [c.name for c in columns]
    into = f"INSERT INTO {quote.format_table(table)} ({', '.join(quote.quote(n) for n in names)})"
    if conn.dialect.name == "postgresql":
        arrays = ", ".join(f"CAST(%b AS {c.type.compile(dialect=conn.dialect)}[])" for c in columns)
        sql = f"{into} SELECT * FROM unnest({arrays})"
        for start in range(0, len(values[0]), _INSERT_CHUNK):
            end = start + _INSERT_CHUNK
            conn.exec_driver_sql(sql, tuple(column[start:end] for column in values))
        return
    if conn.dialect.name == "sqlite":
        row = f"({', '.join('?' * len(names))})"
        whole = len(values[0]) - len(values[0]) % _SQLITE_ROWS
        sql = f"{into} VALUES {', '.join([row] * _SQLITE_ROWS)}"
        for start in range(0, whole, _SQLITE_ROWS):
            end = start + _SQLITE_ROWS
            chunk = zip(*(column[start:end] for column in values), strict=True)
            conn.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(chunk)))
        values = [column[whole:] for column in values]  # the rest, one by one
    rows = list(zip(*values, strict=True))
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=names)
    if compiled.positional:
        assert list(compiled.positiontup or ()) == names, "rows are in the columns' order"
        params: list[Any] = rows
    else:
        params = [dict(zip(names, row, strict=True)) for row in rows]
    for start in range(0, len(params), _INSERT_CHUNK):
        conn.exec_driver_sql(str(compiled), params[start : start + _INSERT_CHUNK])
