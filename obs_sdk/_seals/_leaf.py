"""What a seal commits to for one audit record: its leaf.

The leaf is the RFC 8785 encoding of ``{"v": 1, "record": ..., "commitments": ...}``:
``record`` holds every non-NULL column of the audit row (read from the table, so a column
added later is covered, and a NULL column added by a migration leaves old leaves as they
were), except the personal fields. Those enter as salted commitments,
``SHA-256(salt || field || 0x00 || canonical(value))``: erasing a person deletes the value
and the salt, the commitment stays, and the leaf still hashes to what was sealed.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import Column

from obs_sdk._ledger._tables import UTCDateTime
from obs_sdk._seals._canonical import canonical, dumps_plain, encode_string, is_plain
from obs_sdk._seals._merkle import leaf_hash

__all__ = [
    "LEAF_VERSION",
    "PERSONAL",
    "Leaf",
    "commitment",
    "has_personal",
    "json_value",
    "leaf_bytes",
    "leaf_of",
    "record_fields",
    "row_reader",
    "sealed_leaf_hash",
    "value_reader",
]

LEAF_VERSION = 1  # leaf_bytes() writes it
# Personal data about the actor that erase_actor() removes (GDPR article 17).
PERSONAL = ("actor_name", "actor_email", "ip", "user_agent")
_PERSONAL = frozenset(PERSONAL)
_UTC = datetime.timezone.utc
_sha256 = hashlib.sha256
# What a commitment hashes after the salt: the field's name and a 0x00.
_NAMED = {name: name.encode() + b"\x00" for name in PERSONAL}
_HEX = "0123456789abcdef"
# The stored forms on SQLite: a UUID as 32 hex digits, a time as "YYYY-MM-DD HH:MM:SS.ffffff".
_SQLITE_UUID_LEN, _SQLITE_TIME_LEN = 32, 26


def json_value(value: Any) -> Any:
    """Return a column value as JSON holds it: ids as text, timestamps as ISO 8601 UTC."""
    kind = type(value)
    if kind is uuid.UUID:
        return str(value)
    if kind is datetime.datetime:
        if value.tzinfo is not _UTC:
            value = value.astimezone(_UTC)
        return value.isoformat(timespec="microseconds")
    return value


def record_fields(row: Sequence[Any], columns: Sequence[str]) -> dict[str, Any]:
    """Return the record's non-NULL columns as JSON values (what a proof discloses).

    *row* holds the values in the order of *columns* (a SQLAlchemy Row of the table).
    """
    return {
        name: value if type(value) is str else json_value(value)
        for name, value in zip(columns, row, strict=True)
        if value is not None
    }


def row_reader(
    dialect: Dialect, columns: Sequence[Column[Any]]
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Return ``row -> record_fields(...)`` for rows as the driver returns them.

    The same fields as :func:`record_fields` of the SQLAlchemy row, without SQLAlchemy's
    result processing (a fifth of a seal); see :func:`value_reader`.
    """
    names = [str(c.name) for c in columns]  # plain str: quoted_name takes the slow JSON path
    converters = [
        (name, convert)
        for name, convert in zip(names, (value_reader(dialect, c) for c in columns), strict=True)
        if convert is not None
    ]

    def fields(row: Sequence[Any]) -> dict[str, Any]:
        out = {name: value for name, value in zip(names, row, strict=True) if value is not None}
        for name, convert in converters:
            value = out.get(name)
            if value is not None:
                out[name] = convert(value)
        return out

    return fields


def value_reader(dialect: Dialect, column: Column[Any]) -> Callable[[Any], Any] | None:
    """Return ``driver value -> JSON value`` for *column*, or None where they are the same.

    Each column that needs it goes through its type's own result processor, then
    :func:`json_value`, except the forms SQLite stores ids and times in, which are
    rewritten as text directly (any other form there takes the processor too). Call it
    with non-NULL values only.
    """
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    kind = column.type
    if process is None:
        return None if isinstance(kind, String) else json_value
    if dialect.name == "sqlite" and isinstance(kind, Uuid):
        return _sqlite_uuid(process)
    if dialect.name == "sqlite" and isinstance(kind, UTCDateTime):
        return _sqlite_time(process)
    return _processed(process)


def _processed(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: json_value(process(value))


def _sqlite_uuid(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # Stored as 32 lower-case hex digits: the text of the UUID is those with 4 dashes.
    def convert(value: Any) -> Any:
        if type(value) is str and len(value) == _SQLITE_UUID_LEN and not value.strip(_HEX):
            return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
        return json_value(process(value))

    return convert


def _sqlite_time(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # Stored as naive UTC "YYYY-MM-DD HH:MM:SS.ffffff": as ISO 8601 UTC, a "T" and "+00:00".
    def convert(value: Any) -> Any:
        if (
            type(value) is str
            and len(value) == _SQLITE_TIME_LEN
            and value[4] == value[7] == "-"
            and value[10] == " "
            and value[13] == value[16] == ":"
            and value[19] == "."
        ):
            return f"{value[:10]}T{value[11:]}+00:00"
        return json_value(process(value))

    return convert


def commitment(salt: bytes, name: str, value: Any) -> str:
    """Return the hex commitment to one personal field's value."""
    encoded = encode_string(value).encode() if type(value) is str else canonical(value)
    named = _NAMED.get(name) or name.encode() + b"\x00"
    return _sha256(salt + named + encoded).hexdigest()


def leaf_bytes(public: Mapping[str, Any], commitments: Mapping[str, str]) -> bytes:
    """Return ``canonical({"commitments": ..., "record": public, "v": 1})``, faster.

    The outer keys are fixed and already in order, and commitments are ASCII hex, so
    only the record goes through the canonicalizer (the seal's and verify's hot path).
    """
    record = _canonical_record(public)
    if not commitments:
        return b'{"record":' + record + b',"v":1}'
    return (
        b'{"commitments":' + dumps_plain(commitments).encode() + b',"record":' + record + b',"v":1}'
    )


def _canonical_record(public: Mapping[str, Any]) -> bytes:
    # Column names are ASCII and most values are text: only nested values (metadata)
    # need the full check for floats, so the common record goes to json.dumps at once.
    for value in public.values():
        kind = type(value)
        if kind is float or ((kind is dict or kind is list) and not is_plain(value)):
            return canonical(public)
    return dumps_plain(public).encode()


def sealed_leaf_hash(fields: dict[str, Any], salt: bytes | None) -> bytes:
    """Return the hash of the leaf a seal signs: :func:`leaf_of` ``(fields, salt).hash``.

    For a record as written (every personal field with its *salt*, None when it has no
    personal field), without what verification also reports: the seal's hot path, so
    *fields* is consumed (its personal fields are taken out) rather than copied.
    """
    if salt is None:
        return leaf_of(fields, salt).hash
    commitments = {}
    for name in PERSONAL:
        value = fields.pop(name, None)
        if value is not None:
            encoded = encode_string(value).encode() if type(value) is str else canonical(value)
            commitments[name] = _sha256(salt + _NAMED[name] + encoded).hexdigest()
    return leaf_hash(leaf_bytes(fields, commitments))


@dataclass(frozen=True, slots=True)
class Leaf:
    """One record's leaf, rebuilt from what is stored now, and what that showed."""

    hash: bytes
    erased: tuple[str, ...] = ()
    # Why the personal fields could not be checked (e.g. a value whose salt is gone).
    problem: str | None = None
    commitments: dict[str, str] = field(default_factory=dict)


def leaf_of(
    fields: Mapping[str, Any], salt: bytes | None, stored: Mapping[str, str] | None = None
) -> Leaf:
    """Build the leaf of a record from its JSON *fields* (see :func:`record_fields`).

    *salt* is the record's salt (None once erased, or when it had no personal field);
    *stored* the commitments kept at erasure. A personal field with no value and no salt
    whose commitment is stored was erased; with its salt still there, it was removed by
    something else, and that is a *problem*.
    """
    # Most records hold no personal field, or all of them with their salt: no per-field loop.
    if _PERSONAL.isdisjoint(fields):
        public, present = fields, []
    else:
        public = {name: value for name, value in fields.items() if name not in _PERSONAL}
        present = [name for name in fields if name in _PERSONAL]
    commitments: dict[str, str] = {}
    erased = []
    problem = None
    if salt is not None:
        for name in present:
            commitments[name] = commitment(salt, name, fields[name])
    elif present:
        problem = f"{present[-1]} has a value but its salt is missing"
    if stored:
        for name, kept in stored.items():
            if name in fields:
                continue
            commitments[name] = kept
            if salt is None:
                erased.append(name)
            else:
                problem = f"{name} was removed, but not by erase_actor (its salt remains)"
    return Leaf(
        leaf_hash(leaf_bytes(public, commitments)), tuple(sorted(erased)), problem, commitments
    )


def has_personal(fields: Mapping[str, Any]) -> bool:
    """Return whether the record holds any personal field (and so needs a salt)."""
    return not _PERSONAL.isdisjoint(fields)
