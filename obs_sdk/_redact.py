"""Secret-looking keys lose their values before anything leaves the process (SPEC rule 7)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "Redactor", "limit_size"]

REDACTED = "[REDACTED]"
DEFAULT_SECRET_WORDS = (
    "token",
    "password",
    "passwd",
    "secret",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "session",
    "private_key",
    "credential",
)
_CACHE_LIMIT = 4096


_NUMBERS = frozenset({int, float, bool, type(None)})  # nothing inside them to redact
_BIG = 10**20  # an int under this in size has at most 21 characters of JSON


class Redactor:
    """Replace values under secret-looking keys, at any depth, in dicts inside lists too.

    A key is secret when, lower-cased with ``-`` read as ``_``, it contains one of the
    words. Decisions are cached per key: the same few keys recur in every record.
    """

    def __init__(self, extra_words: Iterable[str] = ()) -> None:
        words = [*DEFAULT_SECRET_WORDS, *(w.lower().replace("-", "_") for w in extra_words)]
        self._words = tuple(dict.fromkeys(words))
        self._cache: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        hit = self._cache.get(key)
        if hit is None:
            normal = key.lower().replace("-", "_")
            hit = any(word in normal for word in self._words)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[key] = hit
        return hit

    def clean(self, data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
        """Redact *data* and keep it under *max_bytes* of JSON (``limit_size``).

        One pass over the top level, where template metadata keeps its values: only nested
        dicts and lists take ``redact``, and only a dict that may not fit is measured exactly.
        """
        cache = self._cache
        out = {}
        bound = 2
        for key, value in data.items():
            secret = cache.get(key)
            if secret is None:
                secret = self.is_secret(str(key))
            kind = type(value)
            if secret:
                kept: Any = REDACTED
            elif kind is str:
                kept = value
                bound += 6 * len(value) + 2
            elif kind in _NUMBERS:  # _json_bound's rule, inlined for the commonest values
                kept = value
                bound += 24 if kind is not int or -_BIG < value < _BIG else max_bytes + 1
            else:
                kept = self.redact(value)
                bound += _json_bound(kept, max_bytes)
            out[key] = kept
            bound += 6 * len(key if type(key) is str else str(key)) + 4
        return out if bound <= max_bytes else limit_size(out, max_bytes)

    def redact(self, value: Any) -> Any:
        """Return *value* with secret keys' values replaced; the input is not modified."""
        if isinstance(value, dict):
            return {
                k: REDACTED if self.is_secret(str(k)) else self.redact(v) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# One encoder for the process: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))
# JSONEncoder.encode() also builds its C encoder anew per call: half its cost for a small dict.
# Built once here with the same options and no circular-reference guard: record data is frozen
# (plain, acyclic) before it gets here; a cycle would still fail, with RecursionError.
_MAKE_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
_C_STRING = getattr(json.encoder, "c_encode_basestring", None)
_C_ENCODE = (
    _MAKE_C_ENCODER(None, _json_default, _C_STRING, None, ":", ",", False, False, True)
    if _MAKE_C_ENCODER is not None and _C_STRING is not None
    else None
)


def to_json(value: Any) -> str:
    """Serialise plain record data (datetimes, UUIDs, Decimals and bytes as text)."""
    if _C_ENCODE is None or isinstance(value, str):
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def limit_size(data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Keep *data* under *max_bytes* of JSON by cutting its longest strings; keys are kept.

    A cut string ends with ``…[truncated N bytes]`` and the result gains ``_truncated: true``.
    """
    if _json_bound(data, max_bytes) <= max_bytes or len(to_json(data).encode()) <= max_bytes:
        return data
    low, high = 0, _longest_string(data)
    best: dict[str, Any] = _cut(data, 0)
    while low <= high:  # the largest per-string cap that still fits, marker included
        cap = (low + high) // 2
        candidate = _cut(data, cap)
        candidate["_truncated"] = True
        if len(to_json(candidate).encode()) <= max_bytes:
            best, low = candidate, cap + 1
        else:
            high = cap - 1
    best["_truncated"] = True
    return best


def _json_bound(value: Any, limit: int) -> int:
    """An upper bound of *value*'s JSON size in bytes, cheap for the usual small metadata.

    Each character of a string takes at most 6 bytes in JSON (an escaped control character,
    or 4 bytes of UTF-8); other scalars are
    bounded by their text. Stops counting once past *limit*: then the exact size is taken.
    """
    if isinstance(value, str):
        return 6 * len(value) + 2
    if isinstance(value, (bool, int, float)) or value is None:
        return 24 if not isinstance(value, int) or -_BIG < value < _BIG else limit + 1
    if isinstance(value, dict):
        total = 2
        for key, item in value.items():
            total += 6 * len(str(key)) + 4 + _json_bound(item, limit)
            if total > limit:
                break
        return total
    if isinstance(value, list):
        total = 2
        for item in value:
            total += _json_bound(item, limit) + 1
            if total > limit:
                break
        return total
    return limit + 1  # anything else: measure it exactly


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return max((_longest_string(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest_string(v) for v in value), default=0)
    return 0


def _cut(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) <= cap:
            return value
        kept = raw[:cap].decode("utf-8", "ignore")
        return f"{kept}…[truncated {len(raw) - len(kept.encode())} bytes]"
    if isinstance(value, dict):
        return {k: _cut(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, cap) for v in value]
    return value
