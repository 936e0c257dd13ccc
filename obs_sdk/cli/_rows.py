"""Audit records as plain rows: JSON lines and CSV, shared by the CLI and the viewer.

Imports no click or rich, so ``obs_sdk.integrations.viewer`` can use it too.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from obs_sdk._hotpath._records import AuditRecord

__all__ = ["FIELDS", "csv_lines", "json_line", "plain"]

# The columns of obs_audit_log in table order; a record may carry more (a newer schema),
# which plain() keeps and CSV appends after these.
FIELDS = AuditRecord._fields

# A cell starting with one of these is a formula to a spreadsheet (CSV injection, OWASP):
# a customer opening their export in Excel must not run what an actor typed.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def _default(value: Any) -> Any:
    """json.dumps' fallback: ids and times as text, anything else as its str()."""
    return _jsonable(value) if isinstance(value, (uuid.UUID, datetime.datetime)) else str(value)


def plain(record: Any) -> dict[str, Any]:
    """Return *record* (an AuditRecord or a mapping) as a dict of JSON-able values."""
    row = record if isinstance(record, Mapping) else record._asdict()
    return {key: _jsonable(value) for key, value in row.items()}


def json_line(record: Any) -> str:
    """Return *record* as one line of JSON (no newline), keys in column order."""
    # json.dumps converts ids and times through _default: no Python call per plain value
    # (an export writes millions of these).
    row = record if isinstance(record, Mapping) else record._asdict()
    return json.dumps(row, ensure_ascii=False, default=_default)


def _cell(value: Any, spreadsheet_safe: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    else:
        text = str(value)
    if spreadsheet_safe and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_lines(
    records: Iterable[Any], *, header: bool = True, spreadsheet_safe: bool = False
) -> Iterable[str]:
    """Yield CSV text, one line per record (after the header line when *header*).

    Streaming: one record in memory at a time. JSON columns (metadata) are JSON text;
    None is an empty cell. *spreadsheet_safe* prefixes cells that a spreadsheet would run
    as a formula with ``'``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns: list[str] | None = None
    for record in records:
        row = plain(record)
        if columns is None:
            columns = [*FIELDS, *(key for key in row if key not in FIELDS)]
            if header:
                writer.writerow(columns)
        writer.writerow([_cell(row.get(column), spreadsheet_safe) for column in columns])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if columns is None and header:
        writer.writerow(FIELDS)
        yield buffer.getvalue()
