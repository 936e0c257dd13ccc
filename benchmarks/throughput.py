"""Sustained throughput against raw ``executemany``, memory per queued record, full GCs.

Every contender writes the same rows into the same table (obs_sdk's own ``obs_audit_log``,
with its indexes, created fresh for each), in batches of the dispatcher's batch size, one
transaction per batch:

* raw ``executemany`` of pre-rendered rows (sqlite3 / psycopg, values already in the
  driver's types): the ceiling for any writer in Python;
* SQLAlchemy Core ``insert()`` executemany of the same pre-rendered rows (the statement
  obs_sdk's DatabaseSink runs): what the driver layer costs;
* obs_sdk end to end: ``@audited`` calls from 1, 2 and 4 threads, each record rendered and
  written by the dispatcher. The callers pace themselves on the queue's backlog, so the rate
  is what the worker sustains with 0 drops, not how fast a queue fills.
"""

from __future__ import annotations

import datetime
import gc
import json
import sqlite3
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import make_url

import obs_sdk as obs
from benchmarks import contenders
from benchmarks.report import TIMES, markdown_table
from obs_sdk._delivery._dispatch import BATCH_SIZE, DEFAULT_QUEUE_SIZE
from obs_sdk._ledger._tables import insert_ignoring_duplicates, tables
from obs_sdk.testing import capture

THREADS = (1, 2, 4)
HIGH_WATER = DEFAULT_QUEUE_SIZE // 2  # callers wait while this many records are queued
LOW_WATER = DEFAULT_QUEUE_SIZE // 4
COLUMNS = [c.name for c in tables().audit.columns]


@dataclass
class Measured:
    """Rows (or calls) per second of wall time, and the process's CPU µs per row."""

    rate: float
    cpu_us: float
    full_gcs: int = 0


@dataclass
class Row:
    """One line of the throughput table."""

    database: str
    contender: str
    measured: Measured | None
    note: str = ""


@contextmanager
def _stopwatch(n: int) -> Iterator[list[Measured]]:
    """Time the block's wall clock and the process's CPU (all threads) for *n* rows."""
    out: list[Measured] = []
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out.append(Measured(n / wall, cpu * 1e6 / n))


def _median(measured: list[Measured]) -> Measured:
    return Measured(
        statistics.median(m.rate for m in measured),
        statistics.median(m.cpu_us for m in measured),
        sum(m.full_gcs for m in measured),
    )


class _FullGcs:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info.get("generation") == 2:
            self.count += 1


@contextmanager
def _counting_full_gcs() -> Iterator[_FullGcs]:
    counter = _FullGcs()
    gc.callbacks.append(counter)
    try:
        yield counter
    finally:
        gc.callbacks.remove(counter)


def _audited() -> Callable[[Any], Any]:
    return contenders.audited_with(2)(contenders.f)


@contextmanager
def _request_scope() -> Iterator[None]:
    with obs.scope(
        actor=contenders.ACTOR,
        workspace="ws_1",
        organization="org_1",
        ip="203.0.113.5",
        user_agent="curl/8.5",
        request_id="req_9",
    ):
        yield


def prerendered_rows(n: int) -> list[dict[str, Any]]:
    """The rows obs_sdk writes for *n* calls, rendered by obs_sdk itself (via capture())."""
    call = _audited()
    rows: list[dict[str, Any]] = []
    with capture() as cap, _request_scope():
        for start in range(0, n, 10_000):
            for i in range(start, min(n, start + 10_000)):
                call(i)
            rows += cap.audits
            cap.clear()
    return rows


def _sqlite_params(row: dict[str, Any]) -> tuple[Any, ...]:
    """The values SQLAlchemy binds on SQLite: hex uuid, naive UTC text time, JSON text."""
    out = dict(row)
    out["id"] = row["id"].hex
    out["occurred_at"] = (
        row["occurred_at"].astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    )
    out["metadata"] = json.dumps(row["metadata"])
    return tuple(out[c] for c in COLUMNS)


def _postgres_params(row: dict[str, Any]) -> tuple[Any, ...]:
    from psycopg.types.json import Jsonb

    out = dict(row)
    out["metadata"] = Jsonb(row["metadata"])
    return tuple(out[c] for c in COLUMNS)


def _batches(rows: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(rows), BATCH_SIZE):
        yield rows[start : start + BATCH_SIZE]


def _insert_sql(table: str, placeholder: str) -> str:
    marks = ", ".join([placeholder] * len(COLUMNS))
    return (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"
    )


class Target:
    """One database: fresh obs_ tables per contender, and the raw driver for it."""

    def __init__(self, name: str, url: str, workdir: Path) -> None:
        self.name = name
        self.url = url
        self.workdir = workdir
        self.runs = 0

    @property
    def is_sqlite(self) -> bool:
        return self.name == "SQLite"

    @contextmanager
    def fresh(self) -> Iterator[tuple[str, str]]:
        """Yield (url, table prefix) of freshly created, empty obs_ tables; drop them after."""
        self.runs += 1
        prefix = f"bench{self.runs}_"
        url = (
            f"sqlite:///{self.workdir / f'throughput{self.runs}.db'}"
            if self.is_sqlite
            else self.url
        )
        engine = create_engine(url)
        if not self.is_sqlite:
            tables(prefix).metadata.drop_all(engine)  # leftovers of an interrupted run
        obs.create_tables(engine, prefix)
        try:
            yield url, prefix
        finally:
            if not self.is_sqlite:
                tables(prefix).metadata.drop_all(engine)
            engine.dispose()

    def count(self, url: str, prefix: str) -> int:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        select(func.count()).select_from(tables(prefix).audit)
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    def raw_executemany(self, rows: list[dict[str, Any]]) -> Measured:
        """Rows/s of the driver's own executemany, values pre-converted outside the timing."""
        with self.fresh() as (url, prefix):
            table = tables(prefix).audit.name
            if self.is_sqlite:
                params = [_sqlite_params(r) for r in rows]
                conn = sqlite3.connect(make_url(url).database, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")  # as obs_sdk's engine sets it
                sql = _insert_sql(table, "?")
                with _stopwatch(len(rows)) as result:
                    for batch in _batches(params):
                        with conn:  # one transaction per batch
                            conn.executemany(sql, batch)
                conn.close()
            else:
                import psycopg

                params = [_postgres_params(r) for r in rows]
                conninfo = (
                    make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
                )
                with psycopg.connect(conninfo) as conn:
                    sql = _insert_sql(table, "%s")
                    with _stopwatch(len(rows)) as result:
                        for batch in _batches(params):
                            with conn.transaction(), conn.cursor() as cur:
                                cur.executemany(sql, batch)
            self._check(url, prefix, len(rows))
        return result[0]

    def core_executemany(self, rows: list[dict[str, Any]]) -> Measured:
        """Rows/s of SQLAlchemy Core with obs_sdk's insert statement, dicts pre-rendered."""
        with self.fresh() as (url, prefix):
            engine = _engine(url)
            statement = insert_ignoring_duplicates(tables(prefix).audit, engine.dialect.name)
            with _stopwatch(len(rows)) as result:
                for batch in _batches(rows):
                    with engine.begin() as conn:
                        conn.execute(statement, batch)
            engine.dispose()
            self._check(url, prefix, len(rows))
        return result[0]

    def obs_sustained(self, calls: int, threads: int) -> Measured:
        """Calls/s through ``@audited`` from *threads* threads, delivered, with 0 drops."""
        call = _audited()
        with self.fresh() as (url, prefix):
            obs.configure(database=url, table_prefix=prefix, service="bench")
            per_thread = calls // threads

            def worker() -> None:
                with _request_scope():
                    for i in range(per_thread):
                        call(i)
                        if i % 100 == 0 and obs.stats()["queued"] > HIGH_WATER:
                            while obs.stats()["queued"] > LOW_WATER:
                                time.sleep(0.0005)  # pacing: let the dispatcher catch up

            pool = [threading.Thread(target=worker) for _ in range(threads)]
            gc.collect()
            total = per_thread * threads
            with _counting_full_gcs() as gcs, _stopwatch(total) as result:
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                delivered = obs.flush(timeout=120.0)
            stats = obs.stats()
            obs.shutdown()
            if not delivered or stats["delivered"] != total or stats["dropped"] or stats["failed"]:
                raise RuntimeError(f"throughput run lost records: {stats}")
            self._check(url, prefix, total)
        result[0].full_gcs = gcs.count
        return result[0]

    def _check(self, url: str, prefix: str, expected: int) -> None:
        found = self.count(url, prefix)
        if found != expected:
            raise RuntimeError(f"{self.name}: expected {expected} rows in the table, found {found}")


def _engine(url: str) -> Engine:
    # The engine obs_sdk itself builds for this URL (WAL and busy timeout on SQLite).
    from obs_sdk._config import _engine_for_url

    return _engine_for_url(url)


def run(
    workdir: Path, *, quick: bool, postgres_url: str | None, progress: Callable[[str], None]
) -> str:
    """Measure every database and return the Markdown tables."""
    calls = 10_000 if quick else 50_000
    repeats = 1 if quick else 3
    progress(f"rendering {calls} rows with obs_sdk")
    rows = prerendered_rows(calls)
    targets = [Target("SQLite", "", workdir)]
    lines: list[Row] = []
    gc_rows: list[tuple[str, str, str]] = []
    if postgres_url:
        targets.append(Target("PostgreSQL", postgres_url, workdir))
    else:
        lines.append(
            Row(
                "PostgreSQL",
                "all rows",
                None,
                "skipped: set OBS_TEST_POSTGRES_URL (or --postgres URL)",
            )
        )
    for target in targets:
        progress(f"{target.name}: raw and Core executemany")
        raw = _median([target.raw_executemany(rows) for _ in range(repeats)])
        core = _median([target.core_executemany(rows) for _ in range(repeats)])
        lines.append(Row(target.name, f"raw executemany, batches of {BATCH_SIZE}", raw))
        lines.append(Row(target.name, "SQLAlchemy Core insert() executemany", core))
        for threads in THREADS:
            progress(f"{target.name}: obs_sdk from {threads} thread(s)")
            measured = _median([target.obs_sustained(calls, threads) for _ in range(repeats)])
            label = f"obs_sdk @audited, {threads} thread(s), end to end"
            lines.append(Row(target.name, label, measured, "0 dropped"))
            per_million = measured.full_gcs * 1e6 / (calls * repeats)
            gc_rows.append((target.name, f"{threads} thread(s)", f"{per_million:,.0f}"))
    out = [
        f"{calls:,} calls or rows per measurement, median of {repeats}. Same table and indexes "
        f"(obs_audit_log), batches of {BATCH_SIZE}, one transaction per batch. Raw and Core "
        "insert rows rendered beforehand (by obs_sdk, via `capture()`); obs_sdk renders its own "
        "inside the measurement. CPU is the process's, all threads.\n",
        _throughput_table(lines),
        "\nFull garbage collections per million calls in the end-to-end runs (worker running):\n",
        markdown_table(("database", "threads", "full GCs per 1M calls"), gc_rows, right_from=2),
    ]
    return "\n".join(out)


def _throughput_table(lines: list[Row]) -> str:
    raw = {line.database: line.measured for line in lines if line.contender.startswith("raw")}
    table = []
    for line in lines:
        m, base = line.measured, raw.get(line.database)
        if m is None or base is None:
            table.append((line.database, line.contender, "—", "—", "—", line.note))
            continue
        ratio = f"{m.rate / base.rate:.2f}{TIMES}"
        table.append(
            (line.database, line.contender, f"{m.rate:,.0f}", ratio, f"{m.cpu_us:,.1f}", line.note)
        )
    header = ("database", "contender", "rows/s", f"{TIMES} raw", "CPU µs per row", "note")
    return markdown_table(header, table, right_from=2)


def memory_per_record(control: contenders.ObsControl, calls: int) -> str:
    """Bytes per record waiting in the queue, by tracemalloc, for the overhead contenders."""
    variants = [
        ("@audited, 0 fields", contenders.audited_with(0)(contenders.f)),
        ("@audited, 2 fields", contenders.audited_with(2)(contenders.f)),
        ("@audited, 5 fields", contenders.audited_with(5)(contenders.f)),
        ("@tracked, 1 property", obs.tracked("item_read", properties={"x": "{x}"})(contenders.f)),
        ("closure floor (reference)", contenders.closure_floor(contenders.f)),
    ]
    rows = []
    with control.scope():
        for label, call in variants:
            call(0)  # first call outside the measurement: lazy caches
            control.discard()
            contenders.clear_floor()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(calls):
                call(i + 1000)  # ints above the small-int cache: a real per-call argument
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            control.discard()
            contenders.clear_floor()
            rows.append((label, f"{(after - before) / calls:,.0f}"))
    note = (
        f"{calls:,} records queued (router held). Per record: the intake's slot, the record "
        "tuple, its timestamp and the resolved template values (fresh ints here); not the "
        "spec, scope and actor objects that every record of a call site shares."
    )
    return note + "\n\n" + markdown_table(("record", "bytes per queued record"), rows)
