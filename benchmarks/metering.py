"""``metered_storage`` next to hand-written SQL with the same guarantees, per upload and delete.

Each operation is one transaction on the app's own session: an upload inserts a document row
and charges its bytes; a delete removes the row and releases what was charged. The
hand-written version gives the same guarantees for these cases: the quota check is one
conditional statement (an owner's first charge included, so two uploads can never both pass a
check only one fits), the ledger charges only growth (a retried upload never double-charges),
a release subtracts what the deleted ledger row says (a retried delete subtracts nothing,
never below zero), and a savepoint undoes the accounting when the body raises. It leaves out
what obs_sdk also does: moving an object between owners, PostgreSQL's row lock that
serialises concurrent charges of one object, the owner from the scope, audit of charges.
Both run interleaved operation by operation, on the same database file, in tables with the same
schema.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

import obs_sdk as obs
from benchmarks.report import TIMES, markdown_table
from obs_sdk.exceptions import QuotaExceeded

OWNER = "org_1"
_DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
QUOTA = 10**15
SIZE = 4096


class HandWritten:
    """The charge and release SQL a careful engineer would write by hand (SQLite/PostgreSQL)."""

    def __init__(self, prefix: str) -> None:
        usage, objects = f"{prefix}storage_usage", f"{prefix}storage_objects"
        growth = f"(:n - COALESCE((SELECT bytes FROM {objects} WHERE object_id = :oid), 0))"
        self.charge = text(
            f"INSERT INTO {usage} (owner, bytes) SELECT :owner, {growth} WHERE {growth} <= :quota "
            f"ON CONFLICT (owner) DO UPDATE SET bytes = {usage}.bytes + excluded.bytes "
            f"WHERE {usage}.bytes + excluded.bytes <= :quota OR excluded.bytes <= 0"
        )
        self.ledger = text(
            f"INSERT INTO {objects} (object_id, owner, bytes, charged_at) "
            "VALUES (:oid, :owner, :n, CURRENT_TIMESTAMP) ON CONFLICT (object_id) DO UPDATE "
            "SET bytes = excluded.bytes, charged_at = excluded.charged_at"
        )
        self.forget = text(f"DELETE FROM {objects} WHERE object_id = :oid RETURNING owner, bytes")
        self.subtract = text(
            f"UPDATE {usage} SET bytes = CASE WHEN bytes > :n THEN bytes - :n ELSE 0 END "
            "WHERE owner = :owner"
        )

    def upload(self, session: Session, oid: str, body: Callable[[], None]) -> None:
        params = {"owner": OWNER, "oid": oid, "n": SIZE, "quota": QUOTA}
        if session.execute(self.charge, params).rowcount != 1:  # type: ignore[attr-defined]
            raise QuotaExceeded(owner=OWNER, used=-1, limit=QUOTA, requested=SIZE)
        session.execute(self.ledger, params)
        with session.begin_nested():  # the body's failure undoes the charge
            body()

    def delete(self, session: Session, oid: str, body: Callable[[], None]) -> None:
        row = session.execute(self.forget, {"oid": oid}).first()
        if row is not None:
            session.execute(self.subtract, {"owner": row.owner, "n": row.bytes})
        with session.begin_nested():
            body()


def _body(session: Session, sql: str, oid: str) -> Callable[[], None]:
    """The app's own write inside the block: insert or delete the document row."""

    def body() -> None:
        session.execute(text(sql), {"id": oid})

    return body


def _obs_upload(session: Session, oid: str, body: Callable[[], None]) -> None:
    with obs.metered_storage(session, object_id=oid, bytes=SIZE, owner=OWNER, quota=QUOTA):
        body()


def _obs_delete(session: Session, oid: str, body: Callable[[], None]) -> None:
    with obs.metered_storage(session, object_id=oid, release=True):
        body()


def _timed_op(
    engine: Engine, op: Callable[..., None], body_sql: str, oid: str
) -> tuple[float, float]:
    """Run *op* once, in a transaction of its own; return its wall and CPU µs."""
    started, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session:
        op(session, oid, _body(session, body_sql, oid))
        session.commit()
    return (time.perf_counter() - started) * 1e6, (time.process_time() - cpu) * 1e6


def _drop(engine: Engine, prefixes: list[str]) -> None:
    with engine.begin() as conn:
        for prefix in prefixes:
            conn.execute(text(f"DROP TABLE IF EXISTS {prefix}app_docs"))
    for prefix in prefixes:
        obs.metadata(prefix).drop_all(engine)


def run(engine: Engine, url: str, *, rounds: int, per_round: int) -> list[tuple[str, ...]]:
    """Interleave obs_sdk and hand-written uploads and deletes; return the table rows."""
    shared = engine.dialect.name != "sqlite"  # a server: start clean, leave nothing behind
    if shared:
        _drop(engine, ["meter_obs_", "meter_hand_"])
    obs.configure(database=url, service="bench", table_prefix="meter_obs_")
    hand = HandWritten("meter_hand_")
    obs.create_tables(engine, "meter_hand_")
    contenders = {
        "meter_obs_": (_obs_upload, _obs_delete),
        "meter_hand_": (hand.upload, hand.delete),
    }
    with engine.begin() as conn:
        for prefix in contenders:
            conn.execute(
                text(f"CREATE TABLE IF NOT EXISTS {prefix}app_docs (id VARCHAR(64) PRIMARY KEY)")
            )
    # Interleaved operation by operation, in alternating order, and summarised by medians:
    # SQLite's occasional checkpoint (copying its write-ahead log into the database file,
    # tens of ms) lands on one operation now and then, whichever commit crosses the log's
    # size limit. Both contenders write the same pages, so they share those costs; a
    # median per operation keeps them from deciding the ratio.
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    sql = {
        prefix: (
            f"INSERT INTO {prefix}app_docs (id) VALUES (:id)",
            f"DELETE FROM {prefix}app_docs WHERE id = :id",
        )
        for prefix in contenders
    }
    for r in range(rounds):
        ids = [f"doc_{r}_{i}" for i in range(per_round)]
        for step, action in enumerate(("upload", "delete")):
            for i, oid in enumerate(ids):
                order = list(contenders.items())
                if (r + i) % 2:
                    order.reverse()
                for prefix, ops in order:
                    times.setdefault((prefix, action), []).append(
                        _timed_op(engine, ops[step], sql[prefix][step], oid)
                    )
    usage = {prefix: _usage(engine, prefix) for prefix in contenders}
    obs.shutdown()
    if any(usage.values()):
        raise RuntimeError(f"every upload was deleted, yet usage is {usage}")
    if shared:
        _drop(engine, list(contenders))
    rows = []
    for action in ("upload", "delete"):
        mine = [statistics.median(t[i] for t in times[("meter_obs_", action)]) for i in (0, 1)]
        theirs = [statistics.median(t[i] for t in times[("meter_hand_", action)]) for i in (0, 1)]
        rows.append(
            (
                _DATABASES.get(engine.dialect.name, engine.dialect.name),
                f"{action} + commit",
                f"{mine[0]:,.0f} / {theirs[0]:,.0f}",
                f"{mine[0] / theirs[0]:.2f}{TIMES}",
                f"{mine[1]:,.0f} / {theirs[1]:,.0f}",
                f"{mine[1] / theirs[1]:.2f}{TIMES}",
            )
        )
    return rows


def _usage(engine: Engine, prefix: str) -> int:
    with engine.connect() as conn:
        value = conn.execute(
            text(f"SELECT bytes FROM {prefix}storage_usage WHERE owner = :owner"), {"owner": OWNER}
        ).scalar()
    return int(value or 0)


def report(workdir: Path, *, quick: bool, postgres_url: str | None) -> str:
    """Measure on a fresh SQLite file (WAL, as obs_sdk configures it) and on PostgreSQL."""
    from obs_sdk._config import _engine_for_url

    rounds, per_round = (2, 20) if quick else (10, 200)
    urls = [f"sqlite:///{workdir / 'metering.db'}"] + ([postgres_url] if postgres_url else [])
    rows: list[tuple[str, ...]] = []
    for url in urls:
        engine = _engine_for_url(url)
        try:
            rows += run(engine, url, rounds=rounds, per_round=per_round)
        finally:
            engine.dispose()
    if not postgres_url:
        rows.append(("PostgreSQL", "skipped: set OBS_TEST_POSTGRES_URL", "—", "—", "—", "—"))
    note = (
        f"{rounds} rounds of {per_round} uploads then {per_round} deletes, interleaved operation "
        "by operation, one transaction each; median µs per operation, metered_storage / "
        "hand-written, with the body's own INSERT/DELETE and the commit. Wall time includes "
        "the commit's fsync; CPU time is this process's, system time included."
    )
    header = (
        "database",
        "operation",
        "wall µs (obs / hand)",
        "wall ratio (budget ≤ 1.2)",
        "CPU µs (obs / hand)",
        "CPU ratio",
    )
    return note + "\n\n" + markdown_table(header, rows, right_from=2)
