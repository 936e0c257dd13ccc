"""Redaction of secret-looking keys and truncation of oversized metadata (SPEC rule 7)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import obs_sdk as obs
from obs_sdk._redact import Redactor, _json_bound, limit_size, to_json
from obs_sdk.testing import capture


class TestRedaction:
    @pytest.mark.parametrize(
        "key",
        ["token", "Access-Token", "PASSWORD", "passwd", "client_secret", "Authorization",
         "x-api-key", "apikey", "Cookie", "session_id", "private_key", "aws_credentials"],
    )  # fmt: skip
    def test_secret_looking_keys(self, key: str) -> None:
        """Case-insensitive, '-' read as '_': each listed word redacts its value."""
        assert Redactor().redact({key: "v", "plain": "v"}) == {key: "[REDACTED]", "plain": "v"}

    def test_any_depth_and_dicts_in_lists(self) -> None:
        """Nested dicts and dicts inside lists are redacted too, without changing the input."""
        data = {"a": {"b": [{"token": "t", "ok": 1}, {"c": {"password": "p"}}]}}
        redacted = Redactor().redact(data)
        assert redacted == {
            "a": {"b": [{"token": "[REDACTED]", "ok": 1}, {"c": {"password": "[REDACTED]"}}]}
        }
        assert data["a"]["b"][0]["token"] == "t"

    def test_configured_extra_keys(self, sqlite_url: str) -> None:
        """configure(redact_keys=...) adds words; audit metadata and event properties obey."""
        obs.configure(database=sqlite_url, redact_keys=["ssn"])

        @obs.audited("op", metadata={"user_ssn": "{x}", "api_key": "{x}", "n": "{x}"})
        def op(x: str) -> None: ...

        with capture() as cap, obs.scope(actor=obs.Actor.user("u")):
            op("123")
            obs.track("ev", properties={"SSN": "1", "Cookie": "c", "fine": "f"})
        assert cap.audits[0]["metadata"] == {
            "user_ssn": "[REDACTED]",
            "api_key": "[REDACTED]",
            "n": "123",
        }
        assert {k: v for k, v in cap.events[0]["properties"].items() if not k.startswith("$")} == {
            "SSN": "[REDACTED]",
            "Cookie": "[REDACTED]",
            "fine": "f",
        }


class TestTruncation:
    def test_keeps_keys_cuts_long_strings_and_marks(self) -> None:
        """Oversized metadata keeps every key, cuts long strings, sets _truncated."""
        data = {"short": "ok", "long": "x" * 20_000, "n": 5}
        cut = limit_size(data, 1024)
        assert set(cut) == {"short", "long", "n", "_truncated"}
        assert cut["_truncated"] is True
        assert cut["short"] == "ok" and cut["n"] == 5
        assert cut["long"].endswith("bytes]") and "…[truncated " in cut["long"]
        assert len(json.dumps(cut, ensure_ascii=False, separators=(",", ":")).encode()) <= 1024

    def test_small_metadata_is_untouched(self) -> None:
        """Metadata under the limit comes back as it was, without the marker."""
        assert limit_size({"a": "b"}, 1024) == {"a": "b"}

    def test_configured_limit_applies_to_records(self, sqlite_url: str) -> None:
        """configure(max_metadata_bytes=...) bounds each record's metadata."""
        obs.configure(database=sqlite_url, max_metadata_bytes=512)

        @obs.audited("op", metadata={"body": "{body}"})
        def op(body: str) -> None: ...

        with capture() as cap:
            op("é" * 5000)
        metadata = cap.audits[0]["metadata"]
        assert metadata["_truncated"] is True
        assert len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()) <= 512

    @given(st.dictionaries(st.text(max_size=8), st.text(max_size=400), max_size=12))
    def test_any_metadata_fits_and_keeps_keys(self, data: dict[str, Any]) -> None:
        """For any metadata, the result keeps all keys and fits when strings can be cut enough."""
        cut = limit_size(data, 4096)
        assert set(data) <= set(cut)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
            ),
            max_leaves=12,
        )
    )
    def test_the_cheap_size_bound_never_underestimates(self, data: Any) -> None:
        """The shortcut that skips measuring small metadata never lets oversized data through."""
        assert _json_bound(data, 10**9) >= len(to_json(data).encode())
