"""The size bound that spares a call's changes their measuring serialisation.

``render`` (obs_sdk/_delivery/_changes_render.py) skips the JSON it would measure when an
upper bound of the redacted rows' size is within ``max_changes_bytes``. A bound below the
real size would let oversized changes through uncut: this checks it on values built to be
the worst cases (quotes, backslashes, control characters, secret keys whose short values
become "[REDACTED]", every scalar freeze() keeps), and that rows near the limit are still cut.
"""

from __future__ import annotations

import datetime
import decimal
import random
import uuid
from typing import Any

from obs_sdk._delivery._changes_render import _plain_size, _size, render
from obs_sdk._delivery._redact import Redactor
from obs_sdk._delivery._sanitize import TRUNCATED

_TEXT = 'ab"\\\x01\x1f\x7f\n\t {}[]:,'
_SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**63 - 1,
    -2.2250738585072014e-308,
    1e300,
    datetime.datetime(2026, 12, 6, 4, 57, 8, 123456, tzinfo=datetime.timezone.utc),
    datetime.date(2026, 12, 6),
    datetime.time(4, 57, 8, 123456, tzinfo=datetime.timezone.utc),
    datetime.timedelta(days=-999_999_999, microseconds=1),
    uuid.uuid4(),
    decimal.Decimal("-12345678901234567890.123456789"),
]
_KEYS = ["title", "password", "api_key", "token", "a", "x" * 40, 'q"uote']


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 3 and roll < 0.35:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.7:
        return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 30)))
    return rng.choice(_SCALARS)


def _entry(rng: random.Random) -> dict[str, Any]:
    fields = {rng.choice(_KEYS): [_value(rng, 0), _value(rng, 0)] for _ in range(3)}
    return {"table": "docs", "pk": {"id": 1}, "op": "update", "fields": fields}


def test_the_bound_is_never_below_the_redacted_json() -> None:
    rng = random.Random(17)
    redactor = Redactor()
    checked = 0
    for _ in range(3000):
        entry = _entry(rng)
        bound = _plain_size(entry, 65536)
        if bound < 0:
            continue
        assert bound >= _size(redactor.redact(entry)), entry
        checked += 1
    assert checked > 2000  # the generator makes plain entries, mostly


def test_the_worst_cases_each() -> None:
    """Each case where a looser rule would undercount: escaped characters, a short value
    that redaction lengthens, a key that needs escaping."""
    redactor = Redactor()
    cases: list[dict[str, Any]] = [
        {"title": ['"' * 100, "\\" * 100]},
        {"title": ["\x01" * 50]},
        {"token": None},
        {"password": 1},
        {'q"' * 20: "x"},
        {"when": _SCALARS[8], "id": _SCALARS[12], "span": _SCALARS[11]},
    ]
    for case in cases:
        assert _plain_size(case, 65536) >= _size(redactor.redact(case)), case


class _Settings:
    redactor = Redactor()
    max_changes_bytes = 400


def test_rows_over_the_limit_are_still_cut() -> None:
    """Many short plain rows: each bounded under the limit, together over it."""
    rows = [
        {
            "table": "docs",
            "pk": {"id": i},
            "op": "update",
            "fields": {"title": ["a" * 30, "b" * 30]},
        }
        for i in range(10)
    ]
    stored, _ = render(rows, _Settings())  # type: ignore[arg-type]
    assert _size(stored) <= _Settings.max_changes_bytes
    assert stored[-1].get(TRUNCATED) is True
