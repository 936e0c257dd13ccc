"""RFC 8785 JSON canonicalization (JCS) for the JSON values audit records hold.

One byte string per value, the same on every platform and database, so a record's hash
can be recomputed anywhere: object keys sorted by their UTF-16 code units, no whitespace,
strings escaped minimally, numbers written as ECMAScript writes a double.

One deliberate departure: an integer beyond ±2**53 keeps its exact digits. RFC 8785
would round it through a double, so two different records (2**60 and 2**60 + 1) would
share an encoding and an edit between them would pass unseen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "canonical",
    "canonical_number",
    "canonical_text",
    "dumps_plain",
    "encode_string",
    "is_plain",
]

# The C-accelerated encoder of json.dumps(ensure_ascii=False): it escapes exactly what
# RFC 8785 section 3.2.2.2 escapes (", \, and U+0000..U+001F, short forms where JSON has
# them, else \u00xx in lower case) and writes every other character as itself.
encode_string: Any = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)


# json.dumps in C writes the same bytes as RFC 8785 for values without floats (Python's
# repr differs from ECMAScript's there: "2.0", "1e-05") and with ASCII keys only (sorted
# by code point, which is UTF-16 order for them); ~10x faster than the writer below.
_plain_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
# The C encoder that JSONEncoder.encode makes anew on each call, made once: a seal calls
# this twice per record. No circular-reference markers: JSON read back has no cycles.
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
if _make_encoder is not None and encode_string is getattr(json.encoder, "c_encode_basestring", 0):
    _chunks = _make_encoder(
        None, _plain_encoder.default, encode_string, None, ":", ",", True, False, False
    )

    def dumps_plain(value: Any) -> str:
        """``json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))``."""
        return "".join(_chunks(value, 0))

else:  # pragma: no cover - CPython without its _json accelerator

    def dumps_plain(value: Any) -> str:
        """``json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))``."""
        return _plain_encoder.encode(value)


_PLAIN = (str, int, bool, type(None))
# ECMAScript writes 1e21 and up, and below 1e-6, with an exponent.
_MAX_PLAIN, _MIN_PLAIN = 21, -6


def is_plain(value: Any) -> bool:
    """Return whether json.dumps writes *value* as RFC 8785 does (no float, ASCII keys)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not is_plain(item):
                return False
        return True
    if kind is list:
        return all(is_plain(item) for item in value)
    return False


def canonical(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of *value*.

    *value* is built from dict (str keys), list or tuple, str, int, float, bool and None.

    Raises:
        ValueError: a NaN or infinite float, a non-string key, a lone surrogate, or a
            type JSON does not have.
    """
    try:
        return canonical_text(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a string holds a lone surrogate, which JSON cannot carry: {exc}"
        ) from exc


def canonical_text(value: Any) -> str:
    """Return :func:`canonical` before its UTF-8 encoding (for a value inside a larger text).

    Raises:
        ValueError: as :func:`canonical`, except a lone surrogate, which only encoding finds.
    """
    if type(value) is str:
        return encode_string(value)  # type: ignore[no-any-return]
    if is_plain(value):  # no float and ASCII keys only: one call in C
        return dumps_plain(value)
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(str(value))
    elif kind is float:
        out.append(canonical_number(value))
    elif is_plain(value):  # a dict or list with no float inside: one call in C
        out.append(dumps_plain(value))
    elif isinstance(value, Mapping):
        _write_object(value, out)
    elif isinstance(value, (list, tuple)):
        _write_array(value, out)
    elif isinstance(value, str):
        out.append(encode_string(str(value)))
    elif isinstance(value, int):  # an int subclass (bool is handled above)
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(canonical_number(float(value)))
    else:
        raise ValueError(f"{kind.__name__} is not a JSON type")


def _write_object(value: Mapping[Any, Any], out: list[str]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"object key {key!r} is not a string")  # noqa: TRY004  (one error type for callers)
    # Sorted by UTF-16 code units (section 3.2.3): code point order, except that
    # characters above U+FFFF (surrogate pairs, 0xD800..) sort before U+E000..U+FFFF.
    keys = sorted(value, key=_utf16_key) if _needs_utf16_sort(value) else sorted(value)
    _write_items(((encode_string(key) + ":", value[key]) for key in keys), "{", "}", out)


def _write_array(value: Sequence[Any], out: list[str]) -> None:
    _write_items((("", item) for item in value), "[", "]", out)


def _write_items(
    items: Iterable[tuple[str, Any]], opening: str, closing: str, out: list[str]
) -> None:
    """Write ``opening prefix value, prefix value ... closing``: an object's or array's members."""
    out.append(opening)
    for index, (prefix, item) in enumerate(items):
        out.append("," + prefix if index else prefix)
        _write(item, out)
    out.append(closing)


def _needs_utf16_sort(value: Mapping[str, Any]) -> bool:
    return any(not key.isascii() for key in value)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def canonical_number(value: float) -> str:
    """Write a double as ECMAScript's Number.prototype.toString does (RFC 8785 3.2.2.3).

    Python's repr() already gives the shortest digits that round-trip, which is what
    ECMAScript asks for; only the layout (where the point and the exponent go) differs.

    Raises:
        ValueError: NaN or an infinity (JSON has neither).
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no JSON form")
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # value = 0.<digits> * 10**point, in ECMAScript's terms n = point, k = len(digits).
    point = len(whole) + (int(exp_text) if exp_text else 0)
    if whole == "0":  # 0.000123: leading zeros of the fraction move the point left
        point -= len(fraction) - len(fraction.lstrip("0")) + 1
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= _MAX_PLAIN:
        return sign + digits + "0" * (point - k)
    if 0 < point <= _MAX_PLAIN:
        return sign + digits[:point] + "." + digits[point:]
    if _MIN_PLAIN < point <= 0:
        return sign + "0." + "0" * -point + digits
    exponent = point - 1
    exp_sign = "+" if exponent >= 0 else "-"
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{exp_sign}{abs(exponent)}"
