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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from obs_sdk._canonical import canonical, dumps_plain, encode_string, is_plain
from obs_sdk._merkle import leaf_hash

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
]

LEAF_VERSION = 1  # leaf_bytes() writes it
# Personal data about the actor that erase_actor() removes (GDPR article 17).
PERSONAL = ("actor_name", "actor_email", "ip", "user_agent")
_PERSONAL = frozenset(PERSONAL)
_UTC = datetime.timezone.utc
_sha256 = hashlib.sha256


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


def commitment(salt: bytes, name: str, value: Any) -> str:
    """Return the hex commitment to one personal field's value."""
    encoded = encode_string(value).encode() if type(value) is str else canonical(value)
    return _sha256(salt + name.encode() + b"\x00" + encoded).hexdigest()


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
    public = {}
    commitments: dict[str, str] = {}
    erased = []
    problem = None
    for name, value in fields.items():
        if name not in _PERSONAL:
            public[name] = value
        elif salt is not None:
            commitments[name] = commitment(salt, name, value)
        else:
            problem = f"{name} has a value but its salt is missing"
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
