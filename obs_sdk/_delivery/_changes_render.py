"""Rendering a call's changes for storage: redaction and the ``max_changes_bytes`` bound.

Runs where the rest of the record is rendered (the dispatcher thread, or a commit), never on
the call's hot path. Registered into ``_records`` (``render_changes``) on import.
"""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

from obs_sdk._delivery._redact import REDACTED, to_json
from obs_sdk._delivery._sanitize import MAX_KEY_CHARS, TRUNCATED, bound_mapping
from obs_sdk._hotpath import _records
from obs_sdk._hotpath._records import RenderSettings

__all__ = ["render"]


def render(changes: list[dict[str, Any]], c: RenderSettings) -> tuple[list[Any], bool]:
    """Redact and bound *changes* for storage: (what to store, whether a value was sanitized).

    The metadata rules: a secret-looking field name keeps its name and loses its values
    (``"password_hash": "[REDACTED]"``); values a database would refuse are sanitized; past
    ``max_changes_bytes`` of JSON, the longest strings are cut with the metadata limit's
    marker (``…[truncated N bytes]``, and the row gains ``"_truncated": true``), then, if
    rows with strings of ``_SHORTEST`` bytes still do not fit, the last rows are left out
    and counted in a final ``{"_truncated": true, "omitted": N}``.
    """
    limit = c.max_changes_bytes
    redactor = c.redactor
    sanitized = False
    rows: list[Any] = []
    omitted = 0
    if changes and "omitted" in changes[-1]:  # rows the call did not diff (MAX_ROWS)
        omitted = changes[-1]["omitted"]
        changes = changes[:-1]
    most = 2  # at most this many bytes of JSON, the list's brackets first (see _plain_size)
    for entry in changes:
        size = _plain_size(entry, limit)
        if size >= 0:
            bounded = entry  # nothing to sanitize or cut: bound_mapping would copy it as is
            most += size + 1
        else:
            bounded, how = bound_mapping(entry, limit)
            if how is not None and how.sanitized:
                sanitized = True
            most += limit  # not bounded here: measured below
        rows.append(redactor.redact(bounded))
    if omitted:
        rows.append({TRUNCATED: True, "omitted": omitted})
        most += limit
    if most <= limit or _size(rows) <= limit:
        return rows, sanitized
    if omitted:
        rows.pop()
    low, high = _SHORTEST, _longest(rows)
    best = [_cut(row, low) for row in rows]
    while low <= high:  # the largest per-string cap that still fits
        cap = (low + high) // 2
        candidate = [_cut(row, cap) for row in rows]
        if _size(candidate) <= limit:
            best, low = candidate, cap + 1
        else:
            high = cap - 1
    for before, after in zip(rows, best, strict=True):
        if after != before:
            after[TRUNCATED] = True
    return _omitting(best, limit, omitted), sanitized


def _plain_size(value: Any, limit: int) -> int:
    """At most how many bytes of JSON *value* takes once redacted; -1 when it is not plain.

    Plain is what bound_mapping would keep as it is: clean text (ASCII, no NUL) no longer
    than *limit*, 64-bit ints, finite floats, None, bools, and the scalars freeze() keeps.
    The bound spares the call's usual changes a serialisation to measure them: a string
    takes at most 2 bytes a character when printable (an escaped quote or backslash), else
    6 (a control character as a unicode escape); any value may become ``"[REDACTED]"``.
    """
    kind = type(value)
    if kind is str:
        if len(value) > limit or "\x00" in value or not value.isascii():
            return -1
        size = _text_size(value)
    elif kind is dict:
        size = 1
        for k, v in value.items():
            if type(k) is not str or len(k) > MAX_KEY_CHARS or not k.isascii() or "\x00" in k:
                return -1
            inner = _plain_size(v, limit)
            if inner < 0:
                return -1
            size += _text_size(k) + 2 + inner  # "key": and a comma
    elif kind is list:
        size = 1
        for v in value:
            inner = _plain_size(v, limit)
            if inner < 0:
                return -1
            size += inner + 1
    elif kind is int:
        if value.bit_length() > _INT_BITS:
            return -1
        size = 20
    elif kind is float:
        if value - value != 0.0:  # NaN or an infinity
            return -1
        size = 24
    elif kind is bytes:
        return -1
    else:
        size = _SCALAR_BYTES.get(kind) or _size(value)
    return max(size, _REDACTED_BYTES)


def _text_size(text: str) -> int:
    """At most the JSON bytes of ASCII *text*: quoted, a character escaped in 2 or 6 bytes."""
    return (2 if text.isprintable() else 6) * len(text) + 2


_INT_BITS = 63
# JSON bytes of the scalars freeze() keeps, at most: None, bools, and the ISO text of dates
# and times (with an offset), a timedelta's text, a UUID's, all quoted. Others measured.
_SCALAR_BYTES = {
    type(None): 4,
    bool: 5,
    datetime.datetime: 34,
    datetime.date: 12,
    datetime.time: 23,
    datetime.timedelta: 34,
    uuid.UUID: 38,
}
_SHORTEST = 32  # bytes of a string kept before rows are left out rather than cut further
_MARKER = re.compile(r"…\[truncated (\d+) bytes\]\Z")


def _cut(value: Any, cap: int) -> Any:
    """*value* with strings over *cap* UTF-8 bytes cut, the marker counting all that is gone."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        if len(raw) <= cap:
            return value
        removed = 0
        earlier = _MARKER.search(value)  # cut before (bound_mapping): count that cut too
        if earlier is not None:
            removed = int(earlier[1])
            raw = value[: earlier.start()].encode("utf-8", "surrogatepass")
        kept = raw[:cap].decode("utf-8", "ignore")
        removed += len(raw) - len(kept.encode("utf-8", "surrogatepass"))
        return f"{kept}…[truncated {removed} bytes]"
    if isinstance(value, dict):
        return {k: _cut(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, cap) for v in value]
    return value


def _longest(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return max((_longest(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest(v) for v in value), default=0)
    return 0


def _omitting(rows: list[Any], limit: int, omitted: int = 0) -> list[Any]:
    """Keep the first *rows* that fit in *limit*, with a marker counting the rest.

    *omitted* rows were already left out (never diffed): the marker counts them too.
    """
    sizes = [_size(row) + 1 for row in rows]
    marker_room = _size({TRUNCATED: True, "omitted": len(rows) + omitted}) + 2
    if 1 + sum(sizes) + (marker_room if omitted else 0) <= limit:
        return [*rows, {TRUNCATED: True, "omitted": omitted}] if omitted else rows
    total, kept = 1, 0
    for size in sizes:
        if total + size + marker_room > limit:
            break
        total += size
        kept += 1
    return [*rows[:kept], {TRUNCATED: True, "omitted": len(rows) - kept + omitted}]


def _size(value: Any) -> int:
    return len(to_json(value).encode("utf-8", "surrogatepass"))


_REDACTED_BYTES = _size(REDACTED)


_records.render_changes = render
