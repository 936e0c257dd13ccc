"""How records are printed: a rich table, one line each (tail), JSON lines or CSV."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from obs_sdk.cli._rows import csv_lines, json_line, plain

__all__ = ["FORMATS", "print_records", "summary"]

FORMATS = ("table", "jsonl", "csv")
_METADATA_WIDTH = 60
_PIPE_WIDTH = 200


def _who(row: dict[str, Any]) -> str:
    name = row.get("actor_id") or row.get("actor_name") or ""
    return f"{row['actor_type']}:{name}" if name else str(row["actor_type"])


def _what(row: dict[str, Any]) -> str:
    if not row.get("resource_type"):
        return ""
    return f"{row['resource_type']}:{row.get('resource_id') or ''}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= _METADATA_WIDTH else text[: _METADATA_WIDTH - 1] + "…"


def record_time(record: Any) -> str:
    """The record's time to the second, UTC."""
    at = record["occurred_at"] if isinstance(record, dict) else record.occurred_at
    return str(at.strftime("%Y-%m-%dT%H:%M:%SZ"))


def summary(record: Any) -> list[str]:
    """The columns a person scans: time, action, outcome, actor, resource, tenant, metadata."""
    row = plain(record)
    return [
        record_time(record),
        row["action"],
        row["outcome"],
        _who(row),
        _what(row),
        row.get("organization_id") or row.get("workspace_id") or "",
        _short(row.get("metadata") or {}),
    ]


_HEADERS = ("time (UTC)", "action", "outcome", "actor", "resource", "tenant", "metadata")


def print_records(
    records: Sequence[Any],
    fmt: str,
    out: TextIO,
    *,
    header: bool = True,
    lines: bool = False,
) -> None:
    """Write *records* to *out* as *fmt*; *lines* prints a table as bare lines (tail -f)."""
    if fmt == "jsonl":
        out.writelines(json_line(record) + "\n" for record in records)
    elif fmt == "csv":
        out.writelines(csv_lines(records, header=header))
    elif lines:
        console = Console(file=out, highlight=False, soft_wrap=True)
        for record in records:
            console.print("  ".join(escape(cell) for cell in summary(record) if cell))
    else:
        table = Table(*_HEADERS, show_header=header, highlight=False)
        for record in records:
            table.add_row(*(escape(cell) for cell in summary(record)))
        console = Console(file=out, highlight=False)
        if not console.is_terminal:  # a pipe or a file: no terminal width to fit
            console.width = _PIPE_WIDTH
        console.print(table)
    out.flush()
