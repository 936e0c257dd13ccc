"""Leaf hashes straight from the driver's rows: the seal's and verify's hot path.

The same bytes as :func:`_leaf.sealed_leaf_hash` of :func:`_leaf.row_reader`'s fields (the
reference, and the fallback), written without the fields' dict: per pattern of NULL columns,
one ``%`` template of the whole leaf, its keys already sorted, into which go the salted
commitments, the text columns through the C string escaper (one ``map``) and the few other
columns through their writers. Python work per value was most of a seal's time; a test
(tests/ledger/test_rows.py) pins this path to the reference on odd rows.
"""

from __future__ import annotations

import hashlib
import json
import json.scanner
from collections.abc import Callable, Sequence
from operator import is_not, itemgetter
from typing import Any

from sqlalchemy import Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import Column

from obs_sdk._ledger._tables import JSONValue, UTCDateTime
from obs_sdk._seals._canonical import canonical_text, dumps_plain, encode_string
from obs_sdk._seals._leaf import LEAF_VERSION, PERSONAL, value_reader

__all__ = ["LeafHasher"]

_sha256 = hashlib.sha256
# A pattern of NULLs is a few per table in practice; past this many, plans are not kept.
_MAX_PLANS = 256

_Row = Sequence[Any]
_Plan = Callable[[_Row, bytes | None], bytes]


class LeafHasher:
    """``(row, salt) -> leaf hash`` for audit rows as the driver returns them.

    Returns None where the reference path must decide: a personal field without a salt
    (verify reports why), or a value this path does not write (a non-text value in a text
    column, a lone surrogate, a NaN): the reference writes it or raises.
    """

    def __init__(self, dialect: Dialect, columns: Sequence[Column[Any]]) -> None:
        self._names = [str(c.name) for c in columns]
        self._writers = [_writer(dialect, c) for c in columns]
        self._nones = (None,) * len(columns)
        self._plans: dict[tuple[bool, ...], _Plan | None] = {}
        personal = [i for i, name in enumerate(self._names) if name in PERSONAL]
        self._personal = _getter(personal)
        self._no_personal = (None,) * len(personal)

    def personal(self, row: _Row) -> bool:
        """Return whether the row holds a personal field (so its leaf needs a salt)."""
        return self._personal(row) != self._no_personal

    def __call__(self, row: _Row, salt: bytes | None) -> bytes | None:
        """Return the row's leaf hash with *salt* (None: it has no salt), or None (see above)."""
        mask = tuple(map(is_not, row, self._nones))
        plan = self._plans.get(mask)
        if plan is None and mask not in self._plans:
            plan = self._plan(mask)
            if len(self._plans) < _MAX_PLANS:
                self._plans[mask] = plan
        if plan is None:
            return None
        try:
            return plan(row, salt)
        except (TypeError, ValueError):  # UnicodeEncodeError too
            return None

    def _plan(self, mask: tuple[bool, ...]) -> _Plan | None:
        """The leaf of the rows whose non-NULL columns are *mask*'s, as one template."""
        names, writers = self._names, self._writers
        present = sorted((i for i, there in enumerate(mask) if there), key=names.__getitem__)
        personal = [i for i in present if names[i] in PERSONAL]
        public = [i for i in present if names[i] not in PERSONAL]
        if not all(names[i].isascii() for i in present) or any(writers[i] for i in personal):
            # Key order would depend on the values (see _leaf.leaf_bytes); personal fields
            # are text columns.
            return None
        texts = [i for i in public if writers[i] is None]
        others = {i: write for i in public if (write := writers[i]) is not None}
        # "%" reads its template faster than str.format; its arguments come as commitments,
        # texts, others, and go in as the template's (sorted) order.
        made = personal + texts + list(others)
        arrange = _getter([made.index(i) for i in personal + public])
        commitments = ",".join(f'{_literal(encode_string(names[i]))}:"%s"' for i in personal)
        record = ",".join(f"{_literal(encode_string(names[i]))}:%s" for i in public)
        template = (
            "\x00{"  # the leaf hash's prefix (RFC 9162), then the leaf
            + (f'"commitments":{{{commitments}}},' if personal else "")
            + f'"record":{{{record}}},"v":{LEAF_VERSION}}}'
        )
        # What a commitment hashes after the salt: the field's name and a 0x00, then its value.
        prefixes = [names[i].encode() + b"\x00" for i in personal]
        personal_of, texts_of = _getter(personal), _getter(texts)
        others_of, other_writers = _getter(list(others)), list(others.values())

        def leaf_hash(row: _Row, salt: bytes | None) -> bytes:
            if personal:
                if salt is None:
                    raise ValueError("a personal field without a salt")
                hexes = [
                    _sha256(salt + prefix + encode_string(value).encode()).hexdigest()
                    for prefix, value in zip(prefixes, personal_of(row), strict=True)
                ]
            else:
                hexes = []
            made = (
                *hexes,
                *map(encode_string, texts_of(row)),
                *[write(value) for write, value in zip(other_writers, others_of(row), strict=True)],
            )
            return _sha256((template % arrange(made)).encode()).digest()

        return leaf_hash


def _writer(dialect: Dialect, column: Column[Any]) -> Callable[[Any], str] | None:
    """Return ``driver value -> its canonical JSON text``; None for text as the driver gives it."""
    convert = value_reader(dialect, column)
    if convert is None:
        return None
    if isinstance(column.type, (Uuid, UTCDateTime)):
        # Ids and times as JSON hold hex digits, dashes, colons, dots and "+T": nothing to escape.
        return lambda value: f'"{convert(value)}"'
    if (
        dialect.name == "sqlite"
        and isinstance(column.type, JSONValue)
        and getattr(dialect, "_json_deserializer", None) is None  # json.loads reads it
    ):
        return _sqlite_json(convert)
    return lambda value: canonical_text(convert(value))


class _NotPlain(Exception):
    """A float (or NaN, Infinity) in JSON text: the canonicalizer must write it."""


def _not_plain(text: str) -> Any:
    raise _NotPlain(text)


# json.loads's own C scanner, which calls these two only for floats, NaN and the infinities.
_scan: Any = json.scanner.make_scanner(
    json.JSONDecoder(parse_float=_not_plain, parse_constant=_not_plain)  # type: ignore[arg-type]
)


def _sqlite_json(convert: Callable[[Any], Any]) -> Callable[[Any], str]:
    # Stored as json.dumps text. ASCII text with no \u escape and no float (the scanner
    # says) holds only ASCII keys: json.dumps writes it as RFC 8785 does, without walking
    # it first (is_plain); anything else, or text json.loads reads differently (spaces
    # around it), goes through the column's processor and the canonicalizer.
    def write(value: Any) -> str:
        if type(value) is str and value.isascii() and "\\u" not in value:
            try:
                parsed, end = _scan(value, 0)
            except (_NotPlain, StopIteration):
                pass
            else:
                if end == len(value):
                    return dumps_plain(parsed)
        return canonical_text(convert(value))

    return write


def _getter(indexes: list[int]) -> Callable[[_Row], tuple[Any, ...]]:
    """``row -> tuple of row[i] for i in indexes`` (itemgetter's own, but always a tuple)."""
    if len(indexes) > 1:
        return itemgetter(*indexes)
    if indexes:
        (only,) = indexes
        return lambda row: (row[only],)
    return lambda row: ()


def _literal(text: str) -> str:
    """*text* inside a ``%`` template."""
    return text.replace("%", "%%")
