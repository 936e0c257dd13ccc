"""Redaction of secret-looking keys and truncation of oversized metadata (SPEC rule 7)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import obs_sdk as obs
from obs_sdk._delivery._redact import Redactor, _json_bound, key_words, limit_size, to_json
from obs_sdk.testing import capture

# Issue 15, item 11: what a key names decides, not the letters it contains.
KEPT = [
    "tokens_used", "session_length_s", "idempotency_key", "cache_key",
    "max_tokens", "inputTokens", "token_count", "token_type", "author", "authored_by",
    "key", "primary_key", "public_key", "sort_key", "s3_key", "api_key_id",
    "session", "session_count", "password_changed_at", "secret_name", "file_hash",
    "cache_key_hash", "monkey", "valid", "oauth_provider",
]  # fmt: skip
REDACTED_KEYS = [
    # issue 15's list
    "auth", "auth_token", "privateKey", "api-key", "pwd", "Authorization", "bearer_token",
    "session_id", "cookie", "client_secret",
    # the old list's real secrets
    "password", "passwd", "secret", "token", "api_key", "apikey", "private_key", "credential",
    "credentials", "set-cookie", "x-api-key", "access_token", "refresh_token", "sessionid",
    # more spellings of the same
    "X-Auth-Token", "APIKey", "HTTP_AUTHORIZATION", "Proxy-Authorization", "JSESSIONID",
    "PHPSESSID", "sessionId", "accesstoken", "clientSecret", "aws_secret_access_key",
    "secretKey", "csrftoken", "password2", "api_key_2", "password_hash", "private_key_pem",
    "password_confirmation", "Cookies", "session_ids",
]  # fmt: skip


def snake(words: tuple[str, ...]) -> str:
    return "_".join(words)


def screaming(words: tuple[str, ...]) -> str:
    return "_".join(words).upper()


def kebab(words: tuple[str, ...]) -> str:
    return "-".join(words)


def header_case(words: tuple[str, ...]) -> str:
    return "-".join(w.capitalize() for w in words)


def camel(words: tuple[str, ...]) -> str:
    return words[0] + "".join(w.capitalize() for w in words[1:])


def pascal(words: tuple[str, ...]) -> str:
    return "".join(w.capitalize() for w in words)


def dotted(words: tuple[str, ...]) -> str:
    return ".".join(words)


STYLES = [snake, screaming, kebab, header_case, camel, pascal, dotted]


class TestWhatAKeyNames:
    """Issue 15, item 11: words, not substrings, across snake, camel and kebab case."""

    @pytest.mark.parametrize("key", KEPT)
    def test_kept(self, key: str) -> None:
        """Counts, lengths and non-secret keys keep their values."""
        assert Redactor().redact({key: 812}) == {key: 812}

    @pytest.mark.parametrize("key", REDACTED_KEYS)
    def test_redacted(self, key: str) -> None:
        """Credentials, however spelled, lose their values."""
        assert Redactor().redact({key: "s3cr3t"}) == {key: "[REDACTED]"}

    @given(key=st.sampled_from(KEPT + REDACTED_KEYS), style=st.sampled_from(STYLES))
    def test_the_case_style_does_not_matter(self, key: str, style: Any) -> None:
        """Any spelling of the same words gets the same decision."""
        redactor = Redactor()
        assert redactor.is_secret(style(key_words(key))) == redactor.is_secret(key)

    @pytest.mark.parametrize(
        ("key", "words"),
        [
            ("privateKey", ("private", "key")),
            ("api-key", ("api", "key")),
            ("X-Auth-Token", ("x", "auth", "token")),
            ("APIKey", ("api", "key")),
            ("HTTP_AUTHORIZATION", ("http", "authorization")),
            ("sha256Sum", ("sha", "256", "sum")),
            ("naïveKey", ("naïve", "key")),
            ("a.b c/d", ("a", "b", "c", "d")),
        ],
    )
    def test_key_words(self, key: str, words: tuple[str, ...]) -> None:
        """Keys split at separators, camelCase humps, acronyms and digits."""
        assert key_words(key) == words

    def test_configured_words_match_whole_words(self) -> None:
        """redact_keys words match the key's words in any case style, never inside a word."""
        redactor = Redactor(["pin", "card-number"])
        for key in ("pin", "user_pin", "pinCode", "PIN", "CardNumber", "card_number_2"):
            assert redactor.is_secret(key), key
        for key in ("spinner", "shipping", "card", "number"):
            assert not redactor.is_secret(key), key


class TestHeaderPairs:
    """Issue 15, item 11: (name, value) pairs, as headers are often held."""

    def test_secret_names_lose_their_values(self) -> None:
        """A list of header tuples keeps its names and its harmless values."""
        headers = [("Authorization", "Bearer x"), ("Accept", "json"), ("Cookie", "a=1")]
        redacted = Redactor().redact({"headers": headers})
        assert redacted["headers"] == [
            ("Authorization", "[REDACTED]"),
            ("Accept", "json"),
            ("Cookie", "[REDACTED]"),
        ]
        assert headers[0] == ("Authorization", "Bearer x")  # the input is not modified

    def test_lists_tuples_and_bytes_names(self) -> None:
        """Pairs as lists, a tuple of pairs and ASGI's bytes names are read the same way."""
        data = {
            "as_lists": [["x-api-key", "k"], ["host", "h"]],
            "as_tuple": (("Set-Cookie", "s"),),
            "asgi": [(b"authorization", b"Bearer x"), (b"accept", b"*/*")],
        }
        assert Redactor().redact(data) == {
            "as_lists": [["x-api-key", "[REDACTED]"], ["host", "h"]],
            "as_tuple": (("Set-Cookie", "[REDACTED]"),),
            "asgi": [(b"authorization", "[REDACTED]"), (b"accept", b"*/*")],
        }

    def test_other_lists_are_left_alone(self) -> None:
        """Lists that are not pairs, and pairs whose first item is not a name, keep values."""
        data = {"tags": ["auth", "login"], "points": [(1, 2), ("token",)], "n": [[3, "token"]]}
        assert Redactor().redact(data) == data

    def test_pairs_and_dicts_at_any_depth(self) -> None:
        """A dict inside a pair's value and pairs inside a dict inside a list are redacted."""
        request = {"headers": [("Authorization", "b")]}
        data = {"calls": [{"request": request}, ("meta", {"pwd": 1})]}
        assert Redactor().redact(data) == {
            "calls": [
                {"request": {"headers": [("Authorization", "[REDACTED]")]}},
                ("meta", {"pwd": "[REDACTED]"}),
            ]
        }

    def test_clean_redacts_pairs_too(self) -> None:
        """The one-pass clean() applies the same rule to top-level header lists."""
        data = {"headers": [("Authorization", "Bearer x")], "tokens_used": 5}
        assert Redactor().clean(data, 8192) == {
            "headers": [("Authorization", "[REDACTED]")],
            "tokens_used": 5,
        }


class TestKeepKeys:
    """configure(keep_keys=...): keys never redacted, however they are spelled."""

    def test_kept_in_any_case_style_at_any_depth(self) -> None:
        """keep_keys match after normalising; values under other secret keys still go."""
        redactor = Redactor(keep_keys=["api_key"])
        data = {"apiKey": "public", "nested": [{"API-KEY": "p"}], "password": "x"}
        assert redactor.redact(data) == {
            "apiKey": "public",
            "nested": [{"API-KEY": "p"}],
            "password": "[REDACTED]",
        }

    def test_keep_wins_over_configured_words(self) -> None:
        """An explicit keep beats both the rules and redact_keys."""
        redactor = Redactor(["ssn"], keep_keys=["ssn_last4", "csrf_token"])
        assert redactor.redact({"ssn_last4": "1234", "ssn": "x", "csrfToken": "t"}) == {
            "ssn_last4": "1234",
            "ssn": "[REDACTED]",
            "csrfToken": "t",
        }

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"keep_keys": "api_key"}, "keep_keys"),
            ({"keep_keys": [3]}, "keep_keys"),
            ({"keep_keys": ["--"]}, "keep_keys"),
            ({"extra_words": "ssn"}, "redact_keys"),
            ({"extra_words": [""]}, "redact_keys"),
            ({"redact": "not callable"}, "redact"),
        ],
    )
    def test_bad_options(self, kwargs: dict[str, Any], message: str) -> None:
        """Mistakes are ConfigurationErrors naming configure()'s option."""
        with pytest.raises(obs.ConfigurationError, match=message):
            Redactor(**kwargs)

    def test_async_redact_callable_is_refused(self) -> None:
        """An async def would return a coroutine, never a dict: refused at configure time."""

        async def scrub(data: dict[str, Any]) -> dict[str, Any]:
            return data

        with pytest.raises(obs.ConfigurationError, match="redact"):
            Redactor(redact=scrub)


class TestRedactCallable:
    """configure(redact=...): the app's last word on what is sent, like before_send."""

    def test_receives_the_redacted_dict_and_its_result_is_sent(self) -> None:
        """The callable sees default-redacted data and returns the dict to send."""
        seen: list[dict[str, Any]] = []

        def scrub(data: dict[str, Any]) -> dict[str, Any]:
            seen.append(dict(data))
            data.pop("email", None)
            return data

        redactor = Redactor(redact=scrub)
        cleaned = redactor.clean({"email": "a@b.c", "token": "t", "n": 1}, 8192)
        assert seen == [{"email": "a@b.c", "token": "[REDACTED]", "n": 1}]
        assert cleaned == {"token": "[REDACTED]", "n": 1}

    def test_its_result_is_kept_under_the_size_limit(self) -> None:
        """A callable that adds data cannot exceed max_metadata_bytes."""
        redactor = Redactor(redact=lambda data: {**data, "blob": "x" * 5000})
        cleaned = redactor.clean({"n": 1}, 512)
        assert cleaned["_truncated"] is True
        assert len(to_json(cleaned).encode()) <= 512

    @pytest.mark.swallows_internal_errors
    def test_a_raising_callable_sends_the_default_redaction(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """If the callable raises, the default-redacted data goes out (never the raw), counted."""

        def scrub(data: dict[str, Any]) -> dict[str, Any]:
            data["token"] = "leaked?"
            raise RuntimeError("bug in the app's scrubber")

        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            cleaned = Redactor(redact=scrub).clean({"token": "t", "n": 1}, 8192)
        assert cleaned == {"token": "[REDACTED]", "n": 1}
        assert obs.stats()["internal_errors"] == 1
        assert "redact" in caplog.text

    @pytest.mark.swallows_internal_errors
    def test_a_callable_returning_no_dict_sends_the_default_redaction(self) -> None:
        """None (sentry's "drop") or any non-dict is counted; the default redaction is sent."""

        def drop(data: dict[str, Any]) -> Any:
            return None

        cleaned = Redactor(redact=drop).clean({"password": "p", "n": 1}, 8192)
        assert cleaned == {"password": "[REDACTED]", "n": 1}
        assert obs.stats()["internal_errors"] == 1


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

    def test_dicts_inside_tuples(self) -> None:
        """A tuple (a template may resolve to one) is walked like a list."""
        assert Redactor().redact({"t": ({"secret": 1}, [{"pwd": 2}])}) == {
            "t": ({"secret": "[REDACTED]"}, [{"pwd": "[REDACTED]"}])
        }

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

    def test_long_strings_inside_tuples_are_cut(self) -> None:
        """Strings inside tuples and header pairs are cut like any other."""
        data = {"headers": [("X-Trace", "y" * 20_000)], "t": ("z" * 5000,)}
        cut = Redactor().clean(data, 1024)
        assert cut["_truncated"] is True
        assert "…[truncated " in cut["headers"][0][1] and "…[truncated " in cut["t"][0]
        assert len(to_json(cut).encode()) <= 1024

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
