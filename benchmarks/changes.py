"""``@audited(..., changes=True)`` next to the same call undecorated, per call with its commit.

The call is what an app's request does: a session of its own, load one row, update one
field, commit. Five contenders, interleaved call by call in one process (in a new random order
each time), on one SQLite file (WAL, as obs_sdk configures it) and on PostgreSQL when given:

- **bare**: the function undecorated, no scope;
- **undecorated, in the same scope**: the function undecorated inside
  ``obs.scope(session=...)``, as in an app whose middleware opens the request's scope whether
  or not the function is decorated;
- **@audited, queued**: decorated, in a scope without a session (the record goes to the queue);
- **@audited, in the transaction**: decorated, ``obs.scope(session=...)``: the record is
  inserted at the commit, in the caller's transaction;
- **@audited(changes=True)**: the same, with the changed row read from SQLAlchemy's history.

Medians of wall and CPU µs per call (flush and commit included), ratios to bare, and ratios
to the undecorated call in the same scope. The issue's goal is ``changes=True`` at most 1.3x
the bare call: the strict baseline, with no scope at all. Run alone with
``python -m benchmarks.changes [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import obs_sdk as obs
from benchmarks.report import TIMES, markdown_table

ACTOR = obs.Actor.user("u_bench")
_DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


class _Base(DeclarativeBase):
    """The benchmark's own model registry."""


class Doc(_Base):
    __tablename__ = "bench_changes_docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(String(200))


def rename(session: Session, doc_id: int, title: str) -> None:
    """The app's function: load one row, change one field (flushed at the commit)."""
    doc = session.get(Doc, doc_id)
    assert doc is not None
    doc.title = title


def contenders() -> dict[str, tuple[str, Callable[..., None], bool, bool]]:
    """key: (label, function, scope with the session?, scope at all?).

    Decorated here, not at import: the first changes= decoration makes obs_sdk listen to
    every Session's flushes, which the other benchmarks of the run should not pay for.
    """
    resource = obs.Resource("doc", "{doc_id}")
    audited = obs.audited("doc.renamed", resource=resource)(rename)
    with_changes = obs.audited("doc.renamed", resource=resource, changes=True)(rename)
    return {
        "bare": ("bare (undecorated)", rename, False, False),
        "scoped": ("undecorated, in the same scope(session=...)", rename, True, True),
        "queued": ("@audited, queued", audited, False, True),
        "tx": ("@audited, in the transaction", audited, True, True),
        "changes": ("@audited(changes=True)", with_changes, True, True),
    }


def _timed_call(
    engine: Engine, contender: tuple[str, Callable[..., None], bool, bool], doc_id: int, title: str
) -> tuple[float, float]:
    """One request: session, call, commit; return its wall and CPU µs."""
    _, func, with_session, scoped = contender
    started, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session:
        if scoped:
            with obs.scope(actor=ACTOR, session=session if with_session else None):
                func(session, doc_id, title)
                session.commit()
        else:
            func(session, doc_id, title)
            session.commit()
    return (time.perf_counter() - started) * 1e6, (time.process_time() - cpu) * 1e6


def run(engine: Engine, *, rounds: int, per_round: int) -> list[tuple[str, ...]]:
    """Interleave the contenders call by call; return the table rows for *engine*."""
    _Base.metadata.drop_all(engine)
    _Base.metadata.create_all(engine)
    obs.configure(database=engine, service="bench")
    table = contenders()
    keys = list(table)
    with Session(engine) as session:
        session.add_all(Doc(id=i, title="t", body="b" * 100) for i in range(len(keys)))
        session.commit()
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in keys}
    # A new order for each call of each: in a fixed rotation, each contender would always
    # follow the same one, and pay for what that one left behind (its record's delivery).
    shuffler = random.Random(17)
    for r in range(rounds):
        for i in range(per_round):
            for key in shuffler.sample(keys, len(keys)):
                times[key].append(_timed_call(engine, table[key], keys.index(key), f"t{r}_{i}"))
    assert obs.flush(timeout=30.0)
    stored = len(obs.audit_log(engine, action="doc.renamed", limit=10_000))
    obs.shutdown()
    _Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM obs_audit_log WHERE action = 'doc.renamed'"))
    if stored != 3 * rounds * per_round:
        raise RuntimeError(f"{stored} records stored, expected {3 * rounds * per_round}")
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    database = _DATABASES.get(engine.dialect.name, engine.dialect.name)
    return [
        (
            database,
            table[key][0],
            f"{wall[key]:,.0f}",
            f"{wall[key] / wall['bare']:.2f}{TIMES}",
            f"{wall[key] / wall['scoped']:.2f}{TIMES}",
            f"{cpu[key]:,.0f}",
            f"{cpu[key] / cpu['bare']:.2f}{TIMES}",
            f"{cpu[key] / cpu['scoped']:.2f}{TIMES}",
        )
        for key in keys
    ]


def report(workdir: Path, *, quick: bool, postgres_url: str | None) -> str:
    """Measure on a fresh SQLite file and, when given, on PostgreSQL; return Markdown."""
    from obs_sdk._config import _engine_for_url

    rounds, per_round = (2, 50) if quick else (10, 300)
    urls = [f"sqlite:///{workdir / 'changes.db'}"] + ([postgres_url] if postgres_url else [])
    rows: list[tuple[str, ...]] = []
    for url in urls:
        engine = _engine_for_url(url)
        try:
            rows += run(engine, rounds=rounds, per_round=per_round)
        finally:
            engine.dispose()
    note = (
        f"{rounds} rounds of {per_round} calls of each contender, interleaved call by call in "
        "a new random order each time; "
        "each call opens a session, loads one row, changes one field and commits. Median µs "
        "per call; ratios to the bare call (no scope: the goal for changes=True is at most 1.3 "
        "times that, wall) and to the undecorated call in the same scope(session=...) (what a "
        "request scope opened by middleware costs anyway). Wall time includes the commit's "
        "fsync; CPU time is this process's, its worker thread included."
    )
    header = (
        "database",
        "call",
        "wall µs",
        "wall / bare",
        "wall / in scope",
        "CPU µs",
        "CPU / bare",
        "CPU / in scope",
    )
    return note + "\n\n" + markdown_table(header, rows, right_from=2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.changes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--postgres", default=os.environ.get("OBS_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="obs-bench-") as tmp:
        print(report(Path(tmp), quick=args.quick, postgres_url=args.postgres))


if __name__ == "__main__":
    main()
