r"""Values every database stores, in a size known in advance: bounding and sanitizing.

Two jobs, both done while rendering (on the dispatcher thread, or at a commit on the
caller's thread), never on the hot path:

- **Bounding** (``max_metadata_bytes``): the limit covers keys and nested values, and the
  work is bounded by the limit, not by the value: a 12.8 MB string or a dict of a million
  keys is walked only as far as the budget reaches (lengths are O(1) in Python), cut, and
  marked ``_truncated: true``. A cut string ends with ``…[truncated N bytes]``, N counting
  every UTF-8 byte removed. A key longer than ``MAX_KEY_CHARS`` is cut the same way and its
  value withheld (``[REDACTED]``): a key that long cannot be judged for secrets cheaply.
- **Sanitizing** (so that PostgreSQL keeps what SQLite keeps): ``\\x00`` and lone surrogates
  become U+FFFD, NaN and infinities become the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"`` (JSON has no such numbers), bytes become text, and a text column's value is
  cut to the column's width with ``…[truncated N chars]``. The same on every database.

The string cutting itself (``cut_strings``, ``largest_cut``) is ``_redact``'s, shared with
its ``limit_size``: one way to cut a mapping to size.
"""

from __future__ import annotations

import math
import re
from typing import Any

from obs_sdk._delivery._redact import (
    REDACTED,
    TRUNCATED,
    CutText,
    cut_strings,
    cut_text,
    json_size,
    largest_cut,
    utf8_len,
)

# TRUNCATED is the cut walkers' (in _redact, which limit_size shares): named here too, with
# the bounding it marks.
__all__ = [
    "MAX_KEY_CHARS",
    "TRUNCATED",
    "Bounded",
    "bound_mapping",
    "safe_text",
    "size_of",
    "size_within",
]

MAX_KEY_CHARS = 256
_REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_BIG_INT_BITS = 64  # a longer int is measured by its digits (JSON has no bound on them)
_SIMPLE = frozenset({int, bool, type(None)})
_CONTAINERS = (dict, list, tuple)


def _clean_text(text: str) -> str:
    """*text* without NUL and lone surrogates (U+FFFD instead); the same object if clean."""
    if "\x00" in text:
        text = text.replace("\x00", _REPLACEMENT)
    if not text.isascii() and _SURROGATE.search(text) is not None:
        text = _SURROGATE.sub(_REPLACEMENT, text)
    return text


def safe_text(text: str, width: int | None) -> str:
    """*text* as a column of *width* characters (None: unbounded) stores it on any database."""
    text = _clean_text(text)
    if width is not None and len(text) > width:
        removed = len(text) - width
        while True:  # the marker's own digits take room too
            marker = f"…[truncated {removed} chars]"
            keep = max(width - len(marker), 0)
            if len(text) - keep == removed:
                break
            removed = len(text) - keep
        text = text[:keep] + marker
    return text


class Bounded:
    """What bounding one mapping did: changed values (``sanitized``), cuts (``truncated``)."""

    __slots__ = ("cut_bytes", "left", "limit", "sanitized", "truncated")

    def __init__(self, max_bytes: int) -> None:
        self.limit = max_bytes  # no string longer than this (in characters) is kept whole
        self.left = 4 * max_bytes  # characters walked before the remaining items are dropped
        self.sanitized = False
        self.truncated = False
        self.cut_bytes = 0  # bytes of the input the output no longer holds (a raw size hint)


def bound_mapping(data: dict[str, Any], max_bytes: int) -> tuple[dict[str, Any], Bounded | None]:
    """Return *data* sanitized and within *max_bytes* of JSON, and what was done.

    The common case (a small flat dict of clean values) is checked in one pass and returned
    as it is, with None: nothing was done. Otherwise the walk copies it, cutting within a
    budget, then fits it exactly.
    """
    if _plain_and_small(data, max_bytes):
        return data, None
    state = Bounded(max_bytes)
    walked = _walk_mapping(data, state, top=True)
    if state.truncated:
        walked[TRUNCATED] = True
    return _fit(walked, max_bytes, state), state


def _plain_and_small(data: dict[str, Any], max_bytes: int) -> bool:
    total = 2
    for key, value in data.items():
        kind = type(value)
        if kind is str:
            if "\x00" in value or not value.isascii():
                return False
            total += len(value)
        elif kind in _SIMPLE:
            if kind is int and value.bit_length() > _BIG_INT_BITS:
                return False
        elif kind is float:
            if value - value != 0.0:  # NaN or an infinity
                return False
        else:
            return False
        if type(key) is not str or "\x00" in key or not key.isascii() or len(key) > MAX_KEY_CHARS:
            return False
        total += len(key) + 24
        if total > max_bytes:
            return False
    return True


def _walk(value: Any, state: Bounded) -> Any:
    kind = type(value)
    if kind is str or kind is CutText:
        return _walk_text(value, state)
    if kind in _SIMPLE:
        if kind is int and value.bit_length() > _BIG_INT_BITS:
            state.left -= value.bit_length() // 3
        else:
            state.left -= 8
        return value
    if kind is float:
        state.left -= 24
        if math.isfinite(value):
            return value
        state.sanitized = True
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return _walk_mapping(value, state, top=False)
    if isinstance(value, (list, tuple)):
        out = []
        for index, item in enumerate(value):
            if state.left <= 0:
                _dropped(value, index, state)
                break
            out.append(_walk(item, state))
        return out
    if isinstance(value, (bytes, bytearray)):
        state.sanitized = True
        return _walk_text(bytes(value).decode("utf-8", "replace"), state)
    state.left -= 40  # a datetime, UUID, Decimal...: JSON text of a bounded length
    return value


def _walk_mapping(value: dict[Any, Any], state: Bounded, *, top: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (key, item) in enumerate(value.items()):
        if state.left <= 0:
            _dropped(value, index, state)
            break
        name = key if type(key) is str else str(key)
        clean = _clean_text(name)
        if clean is not name:
            state.sanitized = True
        if len(clean) > MAX_KEY_CHARS:
            cut = cut_text(clean, MAX_KEY_CHARS)
            state.truncated = True
            state.cut_bytes += utf8_len(clean) - len(cut)
            out[cut] = REDACTED
            state.left -= len(cut) + len(REDACTED)
            continue
        state.left -= len(clean) + 4
        out[clean] = _walk(item, state)
    return out


def _dropped(container: Any, index: int, state: Bounded) -> None:
    """Items from *index* on are not kept: count them (roughly) as cut bytes."""
    state.truncated = True
    state.cut_bytes += (len(container) - index) * 16


def _walk_text(text: str, state: Bounded) -> str:
    limit = state.limit
    if len(text) <= limit:
        clean = _clean_text(text)
        if clean is not text:
            state.sanitized = True
        state.left -= len(clean) + 2
        return clean
    # Cut first, by characters (O(limit)); only a non-ASCII tail is encoded, to count it.
    head = text[:limit]
    removed = len(text) - limit if text.isascii() else utf8_len(text[limit:])
    clean = _clean_text(head)
    if clean is not head:
        state.sanitized = True
    cut = CutText(clean)
    cut.removed = removed + getattr(text, "removed", 0)
    state.cut_bytes += removed
    state.truncated = True
    state.left -= limit + 2
    return cut


def _fit(data: dict[str, Any], max_bytes: int, state: Bounded) -> dict[str, Any]:
    """Cut the longest strings (then the last keys) until the JSON fits in *max_bytes*.

    *data* is already walked: no string in it is longer than ``max_bytes`` characters and
    it holds at most a few times ``max_bytes`` characters, so each try costs O(max_bytes).
    """
    if not _has_long(data) and json_size(data) <= max_bytes:
        return data
    state.truncated = True
    best = largest_cut(data, max_bytes)
    if best is None:  # even empty strings do not fit: keep the first keys that do
        best = cut_strings(data, 0)
        keys = [k for k in best if k != TRUNCATED]
        low, high = 0, len(keys)
        while low < high:
            middle = (low + high + 1) // 2
            candidate = {k: best[k] for k in keys[:middle]}
            candidate[TRUNCATED] = True
            if json_size(candidate) <= max_bytes:
                low = middle
            else:
                high = middle - 1
        best = {k: best[k] for k in keys[:low]}
    best[TRUNCATED] = True
    return best


def _has_long(value: Any) -> bool:
    if type(value) is CutText:
        return True
    if isinstance(value, dict):
        return any(_has_long(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_long(v) for v in value)
    return False


def size_within(value: Any, budget: int) -> int:
    """Roughly the bytes *value* (a caller's value) holds, counted no further than *budget*.

    Lengths are O(1): a 12.8 MB string costs what a short one does; containers are walked
    only until the budget is spent.
    """
    kind = type(value)
    if kind is str or kind is bytes:
        return 49 + len(value)
    if kind in _SIMPLE or kind is float:
        return 16
    total = 64
    if isinstance(value, dict):
        for key, item in value.items():
            total += size_within(key, budget) + size_within(item, budget - total)
            if total > budget:
                break
        return total
    if isinstance(value, (list, tuple)):
        for item in value:
            total += 8 + size_within(item, budget - total)
            if total > budget:
                break
        return total
    return 48


def size_of(value: Any) -> int:
    """Roughly how many bytes *value* (rendered record data) holds; cheap, not exact."""
    kind = type(value)
    if kind is str:
        return 49 + len(value)
    if kind is dict:
        return 64 + sum(size_of(k) + size_of(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return 56 + sum(size_of(v) + 8 for v in value)
    return 32
