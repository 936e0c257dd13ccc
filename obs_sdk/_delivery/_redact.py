"""Secret-looking keys lose their values before anything leaves the process (SPEC rule 7).

A key is judged by the *words* it is made of, not by the letters it contains: ``privateKey``,
``private-key`` and ``PRIVATE_KEY`` are all the words ``private key``, and a secret word must
be a whole word, so ``tokens_used`` (an LLM's token count) and ``session_length_s`` keep their
values while ``auth``, ``pwd`` and ``bearer_token`` lose theirs. The rules are the tables
below; ``Redactor`` applies them, plus the words and keys ``configure()`` adds.

After the rules: the JSON encoder the sinks share (``to_json``) and the string cutting that
keeps a mapping under a byte budget, used by ``limit_size`` here and by ``_sanitize``'s
``bound_mapping`` (which imports this module, so the shared walkers live here).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from obs_sdk._guard import count_error
from obs_sdk.exceptions import ConfigurationError

__all__ = [
    "REDACTED",
    "TRUNCATED",
    "CutText",
    "Redactor",
    "cut_strings",
    "cut_text",
    "json_size",
    "key_words",
    "largest_cut",
    "limit_size",
    "to_json",
    "utf8_len",
]

REDACTED = "[REDACTED]"

# -- The rules, as data ---------------------------------------------------------------------
# A key is split into lower-case words (see key_words): ``X-Auth-Token`` -> x auth token,
# ``privateKey`` -> private key, ``api_key_2`` -> api key 2. Then:

# 1. A key is secret when ANY of its words is one of these: the word names a credential, or a
#    header that carries one, wherever it sits: Authorization, X-Auth-Token, auth_method,
#    Set-Cookie, aws_credentials, bearer. (Whole words only: ``author`` is not ``auth``.)
SECRET_ANYWHERE = frozenset(
    {"auth", "authorization", "bearer", "cookie", "cookies", "credential", "credentials"}
)

# 2. A key is secret when its LAST word is one of these nouns: the key names the secret
#    itself: token, access_token, csrf_token, client_secret, new_password, passwd, pwd.
#    Plural "tokens" is not here: tokens_used and max_tokens count an LLM's tokens.
SECRET_NOUNS = frozenset(
    {"token", "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase"}
)

# 3. A key whose last word is "key" is secret only when the word before it says what kind of
#    key is a secret one: api_key, x-api-key, privateKey, secret_key, aws_secret_access_key;
#    never idempotency_key, cache_key, primary_key, public_key, sort_key or a bare "key" (an
#    S3 object's name).
SECRET_KEY_QUALIFIERS = frozenset(
    {
        "access",
        "api",
        "client",
        "encryption",
        "hmac",
        "license",
        "master",
        "private",
        "secret",
        "signing",
        "ssh",
        "webhook",
    }
)

# 4. A session's identifier is a bearer credential: session_id, sessionId, session_key,
#    session_token, sessionid, JSESSIONID, PHPSESSID; not session_length_s or session_count.
SESSION_WORDS = frozenset({"session", "sess"})
SESSION_ID_WORDS = frozenset({"id", "ids", "key", "keys", "token", "tokens"})

# 5. Trailing words that only say which form a secret takes are set aside before rules 2-4
#    look at the last word: password_hash, token_value, private_key_pem, password_confirmation,
#    api_key_2 are secret because password, token, private_key and api_key are; cache_key_hash
#    and file_hash stay plain, because cache_key and file do.
FORM_WORDS = frozenset(
    {
        "b64",
        "base64",
        "confirm",
        "confirmation",
        "digest",
        "encoded",
        "encrypted",
        "hash",
        "hashed",
        "hex",
        "pem",
        "plain",
        "plaintext",
        "raw",
        "value",
    }
)

# 6. Words written without a separator are read as two when they end in a secret word:
#    apikey -> api key, accesstoken -> access token, clientsecret -> client secret,
#    setcookie -> set cookie, sessionid / jsessionid -> session id. The head must itself end
#    in a qualifier for "key" and "id" (so monkey, hockey and valid stay one word); "auth" is
#    never split off (oauth is a protocol's name).
_GLUED_NOUNS = (SECRET_NOUNS | SECRET_ANYWHERE) - {"auth"}


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))  # longest first: passwords, password


_GLUED_SECRET = re.compile(rf"(.+?)({_alternatives(_GLUED_NOUNS)})")
_GLUED_KEY = re.compile(rf"(.*?)({_alternatives(SECRET_KEY_QUALIFIERS | SESSION_WORDS)})(keys?)")
_GLUED_SESSION_ID = re.compile(rf"(.*?)({_alternatives(SESSION_WORDS)})(id)")
_GLUED_TAILS = (*_GLUED_NOUNS, "key", "keys", "id")  # a cheap test before the patterns

# One pass over the key: ACRONYM before a Capitalised word, an optionally Capitalised
# lower-case word (other scripts' letters count as lower case: they have no case boundary
# to find), an ACRONYM, or digits. "_", "-", ".", spaces and other punctuation separate.
_WORD = re.compile(r"[A-Z]+(?=[A-Z][^\W_A-Z0-9])|[A-Z]?[^\W_A-Z0-9]+|[A-Z]+|[0-9]+")
_CACHE_LIMIT = 4096

_NUMBERS = frozenset({int, float, bool, type(None)})  # nothing inside them to redact
_BIG = 10**20  # an int under this in size has at most 21 characters of JSON
_SEQUENCES = (list, tuple)
_PAIR = 2  # a (name, value) pair


def key_words(key: str) -> tuple[str, ...]:
    """Split *key* into lower-case words across snake, kebab, camel and dotted case.

    ``"X-Auth-Token"`` -> ``("x", "auth", "token")``; ``"privateKey"`` -> ``("private",
    "key")``; ``"HTTP_AUTHORIZATION"`` -> ``("http", "authorization")``. Pure; thread-safe.
    """
    return tuple(map(str.lower, _WORD.findall(key)))


def _unglued(word: str) -> tuple[str, ...]:
    """Rule 6: read a word written without separators as the words it is glued from."""
    if not word.endswith(_GLUED_TAILS) or word in _GLUED_TAILS:
        return (word,)
    glued = _GLUED_SECRET.fullmatch(word)
    if glued is not None:
        return (*_unglued(glued[1]), glued[2])
    glued = _GLUED_KEY.fullmatch(word) or _GLUED_SESSION_ID.fullmatch(word)
    if glued is not None:
        return (*((glued[1],) if glued[1] else ()), glued[2], glued[3])
    return (word,)


def _secret_by_rules(words: tuple[str, ...]) -> bool:
    """Apply rules 1-5 to a key's words (already unglued)."""
    if not SECRET_ANYWHERE.isdisjoint(words):
        return True
    end = len(words)
    while end > 1 and (words[end - 1] in FORM_WORDS or words[end - 1].isdigit()):
        end -= 1  # rule 5: api_key_2, password_hash
    if end == 0:
        return False
    last, before = words[end - 1], words[end - 2] if end > 1 else ""
    if last in SECRET_NOUNS:
        return True
    if last in ("key", "keys") and before in SECRET_KEY_QUALIFIERS:
        return True
    return last in SESSION_ID_WORDS and before in SESSION_WORDS


def _contains(words: tuple[str, ...], part: tuple[str, ...]) -> bool:
    n = len(part)
    return any(words[i : i + n] == part for i in range(len(words) - n + 1))


def _normal_words(value: object, option: str) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise ConfigurationError(
            f"configure({option}=...) takes key names as strings, got {value!r}"
        )
    words = key_words(value)
    if not words:
        raise ConfigurationError(
            f"configure({option}=...) got {value!r}, which has no letters or digits"
        )
    return words


def _checked_list(values: object, option: str) -> list[tuple[str, ...]]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigurationError(
            f"configure({option}=...) takes a list of key names, not {values!r}"
        )
    return [_normal_words(value, option) for value in values]


class Redactor:
    """Replace values under secret-looking keys, at any depth, in dicts inside lists too.

    A key is secret by the rules at the top of this module, judged on its words
    (``key_words``), or when its words contain the words of one of *extra_words*
    (``configure(redact_keys=...)``: ``"ssn"`` redacts ``user_ssn`` and ``userSsn``, not
    ``classname``). A key in *keep_keys* (``configure(keep_keys=...)``), compared by its
    words, so ignoring case and ``_``/``-``/camelCase, is never redacted. A list or tuple of
    ``(name, value)`` pairs, e.g. headers ``[("Authorization", "Bearer x"), ("Accept", "*")]``,
    has the values of secret names replaced.

    *redact*, when given, takes each cleaned dict and returns the dict to send (like
    posthog's and sentry's ``before_send``), on the dispatcher thread. If it raises or
    returns something other than a dict, the default-redacted dict is sent and the error
    counted in ``obs.stats()["internal_errors"]``: the unredacted data never is. It receives
    a copy of the top-level dict.

    Decisions are cached per key: the same few keys recur in every record. Thread-safe (the
    cache only ever gains entries, and a lost race recomputes the same answer).

    Raises:
        ConfigurationError: an entry of *extra_words* or *keep_keys* is not a string with a
            letter or digit, either is a single string, or *redact* is not a plain callable.
    """

    def __init__(
        self,
        extra_words: Iterable[str] = (),
        *,
        keep_keys: Iterable[str] = (),
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self._extra = tuple(dict.fromkeys(_checked_list(extra_words, "redact_keys")))
        self._keep = frozenset(_checked_list(keep_keys, "keep_keys"))
        if redact is not None and (
            not callable(redact)
            or inspect.iscoroutinefunction(redact)
            or inspect.iscoroutinefunction(getattr(redact, "__call__", None))  # noqa: B004
        ):
            raise ConfigurationError(
                "configure(redact=...) takes a plain function that receives the cleaned "
                f"metadata dict and returns the dict to send, got {redact!r}"
            )
        self._hook = redact
        self._cache: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        """Return whether the value under *key* is replaced (cached per key)."""
        hit = self._cache.get(key)
        if hit is None:
            hit = self._decide(key)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[key] = hit
        return hit

    def _decide(self, key: str) -> bool:
        words = key_words(key)
        if words in self._keep:
            return False
        if any(_contains(words, extra) for extra in self._extra):
            return True
        if any(word.endswith(_GLUED_TAILS) for word in words):
            words = tuple(part for word in words for part in _unglued(word))
        return _secret_by_rules(words)

    def clean(self, data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
        """Redact *data*, keep it under *max_bytes* of JSON, then apply ``redact`` if given.

        ``limit_size`` does the size bound. One pass over the top level, where template
        metadata keeps its values: only nested dicts and lists take ``redact``, and only a
        dict that may not fit is measured exactly.
        """
        cache = self._cache
        out = {}
        bound = 2
        for key, value in data.items():
            secret = cache.get(key)
            if secret is None:
                secret = self.is_secret(key if type(key) is str else str(key))
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
        cleaned = out if bound <= max_bytes else limit_size(out, max_bytes)
        return cleaned if self._hook is None else self._hooked(cleaned, max_bytes)

    def _hooked(self, cleaned: dict[str, Any], max_bytes: int) -> dict[str, Any]:
        """Apply ``configure(redact=...)``; on any failure keep *cleaned* and count it."""
        hook = self._hook
        assert hook is not None
        try:
            sent = hook(dict(cleaned))
        except Exception as exc:  # the user's callable: never reaches the caller (rule 4)
            count_error("redact", exc)
            return cleaned
        if not isinstance(sent, dict):
            count_error(
                "redact",
                TypeError(
                    f"configure(redact=...) returned {type(sent).__name__}, not a dict; "
                    "the default redaction was sent"
                ),
            )
            return cleaned
        return limit_size(sent, max_bytes)

    def redact(self, value: Any) -> Any:
        """Return *value* with secret keys' values replaced; the input is not modified.

        Dicts, lists and tuples are walked at any depth; in a list or tuple, an item that is
        a ``(name, value)`` pair with a ``str`` (or ``bytes``) name is a header: its value is
        replaced when the name is secret.
        """
        if isinstance(value, dict):
            return {
                k: REDACTED if self.is_secret(k if type(k) is str else str(k)) else self.redact(v)
                for k, v in value.items()
            }
        if isinstance(value, _SEQUENCES):
            items = [self._item(item) for item in value]
            return items if isinstance(value, list) else tuple(items)
        return value

    def _item(self, item: Any) -> Any:
        if isinstance(item, _SEQUENCES) and len(item) == _PAIR:
            name = item[0]
            if isinstance(name, (bytes, bytearray)):
                name = bytes(name).decode("latin-1")
            if isinstance(name, str) and self.is_secret(name):
                pair = [item[0], REDACTED]
                return pair if isinstance(item, list) else tuple(pair)
        return self.redact(item)


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


# -- Size: strings cut to fit a byte budget ------------------------------------------------
# limit_size here and bound_mapping (_sanitize) cut alike: the walkers below serve both.

TRUNCATED = "_truncated"  # the key a cut mapping gains, set to True


class CutText(str):
    """A string a bounding walk cut already: ``removed`` counts the UTF-8 bytes it lost."""

    removed: int


def utf8_len(text: str) -> int:
    """The bytes *text* takes in UTF-8 (a lone surrogate counts its 3 bytes)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def json_size(value: Any) -> int:
    """The bytes of *value*'s JSON, exactly."""
    return len(to_json(value).encode("utf-8", "surrogatepass"))


def cut_text(text: str, keep_bytes: int) -> str:
    """*text* in at most *keep_bytes* UTF-8 bytes, then ``…[truncated N bytes]``.

    N counts every byte removed, by this cut and by an earlier one (a ``CutText``).
    """
    raw = text.encode("utf-8", "surrogatepass")
    removed = text.removed if type(text) is CutText else 0
    if len(raw) <= keep_bytes and not removed:
        return text
    kept = raw[:keep_bytes].decode("utf-8", "ignore")
    removed += len(raw) - len(kept.encode("utf-8", "surrogatepass"))
    return f"{kept}…[truncated {removed} bytes]"


def cut_strings(value: Any, cap: int) -> Any:
    """*value* with every string, at any depth, cut to *cap* bytes (``cut_text``)."""
    if isinstance(value, str):
        if type(value) is not CutText and len(value) <= cap // 4:
            return value  # fits whatever its characters' widths
        return cut_text(value, cap)
    if isinstance(value, dict):
        return {k: cut_strings(v, cap) for k, v in value.items()}
    if isinstance(value, _SEQUENCES):
        return [
            cut_strings(v, cap) for v in value
        ]  # JSON has no tuples: a list serialises the same
    return value


def _longest(value: Any) -> int:
    if isinstance(value, str):
        return utf8_len(value)
    if isinstance(value, dict):
        return max((_longest(v) for v in value.values()), default=0)
    if isinstance(value, _SEQUENCES):
        return max((_longest(v) for v in value), default=0)
    return 0


def largest_cut(data: dict[str, Any], max_bytes: int) -> dict[str, Any] | None:
    """*data* cut by ``cut_strings`` at the largest cap whose JSON fits in *max_bytes*.

    The result is marked ``_truncated: true`` (the marker counted in the size); None when
    not even empty strings fit. A binary search: O(size of *data*) per try.
    """
    low, high = 0, _longest(data)
    best = None
    while low <= high:
        cap = (low + high) // 2
        candidate = cut_strings(data, cap)
        candidate[TRUNCATED] = True
        if json_size(candidate) <= max_bytes:
            best, low = candidate, cap + 1
        else:
            high = cap - 1
    return best


def limit_size(data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Keep *data* under *max_bytes* of JSON by cutting its longest strings; keys are kept.

    A cut string ends with ``…[truncated N bytes]`` and the result gains ``_truncated: true``.
    """
    if _json_bound(data, max_bytes) <= max_bytes or json_size(data) <= max_bytes:
        return data
    best = largest_cut(data, max_bytes)
    if best is None:  # not even empty strings fit: every key is kept all the same
        best = cut_strings(data, 0)
        best[TRUNCATED] = True
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
    if isinstance(value, _SEQUENCES):
        total = 2
        for item in value:
            total += _json_bound(item, limit) + 1
            if total > limit:
                break
        return total
    return limit + 1  # anything else: measure it exactly
