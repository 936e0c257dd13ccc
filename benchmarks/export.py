"""``obs-sdk export``: peak memory and rate at 100k and 1M rows (SQLite), in a subprocess.

    .venv/bin/python -m benchmarks.export                 # 100,000 and 1,000,000 rows
    .venv/bin/python -m benchmarks.export --rows 20000    # any sizes

For each size, the database is filled with that many audit rows (realistic widths:
actor, resource, IP, user agent, a small metadata object) by raw ``executemany``, then the
real command, ``python -m obs_sdk.cli export``, writes them all as JSON lines (and as CSV)
to a file, in a fresh process whose peak RSS is read with ``getrusage(RUSAGE_CHILDREN)``
from an otherwise empty parent. Flat memory means the peak barely moves from 100k to 1M
rows. Prints Markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

from obs_sdk._hotpath._records import uuid7
from obs_sdk._ledger._tables import create_tables, tables

SIZES = (100_000, 1_000_000)
_CHUNK = 50_000

# The parent whose only child is the export: RUSAGE_CHILDREN's ru_maxrss is then that
# child's peak resident set (KiB on Linux).
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.perf_counter() - start
if proc.returncode:
    sys.exit(proc.stderr.decode())
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, elapsed)
"""


def fill(path: Path, rows: int) -> None:
    """Create the tables and write *rows* audit rows with sqlite3's executemany."""
    engine = create_engine(f"sqlite:///{path}")
    create_tables(engine)
    engine.dispose()
    columns = [c.name for c in tables().audit.columns]
    sql = (
        f"INSERT INTO {tables().audit.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    start = time.time_ns() - rows * 1_000_000  # one record per ms, ending now
    db = sqlite3.connect(path)
    for first in range(0, rows, _CHUNK):
        batch = []
        for i in range(first, min(first + _CHUNK, rows)):
            ns = start + i * 1_000_000
            at = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)
            values = {
                "id": uuid7(ns).hex,
                "occurred_at": at.replace(tzinfo=None).isoformat(sep=" "),
                "action": "file.downloaded",
                "outcome": "success",
                "actor_type": "user",
                "actor_id": f"u_{i % 997}",
                "actor_name": "Ada Lovelace",
                "actor_email": "ada@example.com",
                "resource_type": "file",
                "resource_id": f"f_{i}",
                "resource_name": f"report-{i}.pdf",
                "organization_id": f"org_{i % 31}",
                "ip": "203.0.113.5",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0",
                "request_id": f"req_{i}",
                "service": "files-api",
                "metadata": json.dumps({"bytes": i * 7, "mime": "application/pdf"}),
            }
            batch.append(tuple(values.get(c) for c in columns))
        db.executemany(sql, batch)
        db.commit()
    db.close()


def measure(url: str, fmt: str, out: Path) -> tuple[int, float]:
    """Run the export in a child process; return (peak RSS in KiB, seconds)."""
    command = [
        sys.executable,
        "-m",
        "obs_sdk.cli",
        "-d",
        url,
        "export",
        "--format",
        fmt,
        "-O",
        str(out),
        "-q",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    )
    peak, seconds = proc.stdout.split()
    return int(peak), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    lines = [
        "| rows | format | peak RSS (MiB) | seconds | rows/s | output (MiB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            db = Path(tmp) / f"export-{rows}.db"
            fill(db, rows)
            for fmt in ("jsonl", "csv"):
                out = Path(tmp) / f"out.{fmt}"
                peak, seconds = measure(f"sqlite:///{db}", fmt, out)
                size = out.stat().st_size / 2**20
                lines.append(
                    f"| {rows:,} | {fmt} | {peak / 1024:.1f} | {seconds:.1f} | "
                    f"{rows / seconds:,.0f} | {size:,.0f} |"
                )
                out.unlink()
            db.unlink()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
