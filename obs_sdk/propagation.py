r"""Carry a scope's ids to another process: ``inject`` into headers, ``extract`` from them.

::

    headers: dict[str, str] = {}
    obs.propagation.inject(headers, secret=SCOPE_SECRET)      # the calling service
    httpx.post(url, headers=headers)

    with obs.propagation.extract(request.headers, trust_actor=True, secret=SCOPE_SECRET):
        handle(request)                                        # the receiving service

Without a secret, anyone who can reach the receiver can write these headers: the tenant
(workspace and organization) is then applied only with ``trust_tenant=True`` and the actor
only with ``trust_actor=True``.

Only ids travel: workspace, organization, actor id and type, request id. Names, emails,
the IP address, the user agent and metadata never leave the process. The fields are
written by an OpenTelemetry ``TextMapPropagator`` beside ``traceparent``, but that
propagator is deliberately *not* registered globally: a global propagator would send tenant
and actor ids on every instrumented outgoing call, third parties included.

Wire format (one header per field; values percent-encoded UTF-8, RFC 3986 unreserved
characters kept as they are):

- ``obs-workspace``, ``obs-organization``, ``obs-actor-type`` (``user`` or ``service``),
  ``obs-actor-id``, ``obs-request-id``;
- with a secret, ``obs-issued-at`` (Unix seconds) and ``obs-signature``:
  ``v1=`` + hex HMAC-SHA256 of the lines ``obs-scope-v1`` then ``<field>:<value>`` for each
  field above in that order (empty when absent) and ``obs-issued-at:<seconds>``, joined by
  ``\n``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry.context import Context, create_key, set_value
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator

from obs_sdk._guard import count_error, guard
from obs_sdk._scope._context import SCOPE_KEY, _ScopeManager, current_scope, scope
from obs_sdk._scope._values import EMPTY_SCOPE, Actor, Scope
from obs_sdk.exceptions import ConfigurationError

__all__ = ["extract", "inject"]

logger = logging.getLogger("obs_sdk")

WORKSPACE = "obs-workspace"
ORGANIZATION = "obs-organization"
ACTOR_TYPE = "obs-actor-type"
ACTOR_ID = "obs-actor-id"
REQUEST_ID = "obs-request-id"
ISSUED_AT = "obs-issued-at"
SIGNATURE = "obs-signature"

# The signed fields, in the order the signature covers them.
ID_FIELDS = (WORKSPACE, ORGANIZATION, ACTOR_TYPE, ACTOR_ID, REQUEST_ID)
ALL_FIELDS = (*ID_FIELDS, ISSUED_AT, SIGNATURE)

DEFAULT_MAX_AGE_SECONDS = 300
MAX_CLOCK_SKEW_SECONDS = 60  # an issue time further ahead than this is not believed
MAX_VALUE_CHARS = 256  # one id, decoded
_SIGNATURE_VERSION = "v1"
_PROPAGATED_ACTOR_TYPES = ("user", "service")  # system and anonymous actors have no id

# Percent-encoded UTF-8 only: no spaces, quotes, separators or control characters.
_ENCODED = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2}){1," + str(MAX_VALUE_CHARS * 4) + "}")
_ISSUED_AT = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v1=[0-9a-f]{64}")

_CARRIED_KEY = create_key("obs_sdk.propagation.carried")


class _Rejected(ValueError):
    """Inbound scope fields that were not applied (counted in ``internal_errors``)."""


def _encode(value: str) -> str | None:
    encoded = quote(value, safe="")
    return encoded if len(value) <= MAX_VALUE_CHARS and encoded else None


def _decode(raw: str) -> str | None:
    """Return the id carried in *raw*, or None when it is not a safe header value."""
    if not _ENCODED.fullmatch(raw):
        return None
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None
    if len(value) > MAX_VALUE_CHARS or not value.isprintable():
        return None
    return value


def _message(raw: Mapping[str, str], issued_at: str) -> bytes:
    lines = ["obs-scope-v1", *(f"{name}:{raw.get(name, '')}" for name in ID_FIELDS)]
    lines.append(f"{ISSUED_AT}:{issued_at}")
    return "\n".join(lines).encode()


def _sign(key: bytes, raw: Mapping[str, str], issued_at: str) -> str:
    digest = hmac.new(key, _message(raw, issued_at), hashlib.sha256).hexdigest()
    return f"{_SIGNATURE_VERSION}={digest}"


class _DictSetter(Setter[MutableMapping[str, str]]):
    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


class _HeaderGetter(Getter[Any]):
    """Read a header from a dict or a framework's headers object, ignoring case."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None and isinstance(carrier, Mapping):
            # A plain dict is case-sensitive; HTTP header names are not.
            for name, item in carrier.items():
                if isinstance(name, str) and name.lower() == key:
                    value = item
                    break
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return [v for v in value if isinstance(v, str)] or None
        return None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k in carrier if isinstance(k, str)]


_SETTER = _DictSetter()
_GETTER = _HeaderGetter()


class _ScopePropagator(TextMapPropagator):
    """Write and read a scope's ids as headers; never registered as a global propagator."""

    def __init__(
        self,
        keys: Sequence[bytes] = (),
        *,
        trust_actor: bool = False,
        trust_tenant: bool = False,
        max_age: float = DEFAULT_MAX_AGE_SECONDS,
        issued_at: float | None = None,
    ) -> None:
        self._keys = tuple(keys)
        # Signed in place of the present time: a queued task's is the time it is due to run.
        self._issued_at = issued_at
        # Why the last extract applied nothing carried (signed carriers), for integrations.
        self.rejected: str | None = None
        self._trust_actor = trust_actor
        # A verified signature proves the tenant came from a holder of the secret.
        self._trust_tenant = trust_tenant or bool(self._keys)
        self._max_age = max_age

    @property
    def fields(self) -> set[str]:
        return set(ALL_FIELDS)

    def inject(
        self, carrier: Any, context: Context | None = None, setter: Setter[Any] = _SETTER
    ) -> None:
        if context is None:
            current = current_scope()  # includes the scope provider's fields
        else:
            frame = context.get(SCOPE_KEY)
            current = frame.scope if frame is not None else EMPTY_SCOPE  # type: ignore[attr-defined]
        raw = _outbound(current)
        if isinstance(carrier, MutableMapping):
            for name in ALL_FIELDS:  # stale fields from an earlier inject must not ride along
                carrier.pop(name, None)
        if not raw:
            return
        if self._keys:
            issued_at = str(int(time.time() if self._issued_at is None else self._issued_at))
            raw[ISSUED_AT] = issued_at
            raw[SIGNATURE] = _sign(self._keys[0], raw, issued_at)
        for name, value in raw.items():
            setter.set(carrier, name, value)

    def extract(
        self, carrier: Any, context: Context | None = None, getter: Getter[Any] = _GETTER
    ) -> Context:
        carried = self._carried(carrier, getter)
        return set_value(_CARRIED_KEY, carried, context if context is not None else Context())

    def _carried(self, carrier: Any, getter: Getter[Any]) -> Scope:
        raw: dict[str, str] = {}
        problems: list[str] = []
        for name in ALL_FIELDS:
            values = getter.get(carrier, name)
            if values is None:
                continue
            if len(set(values)) != 1:
                problems.append(f"{name} arrived {len(values)} times")
                continue
            raw[name] = values[0]
        ids: dict[str, str | None] = {}
        for name in ID_FIELDS:
            if name in raw:
                ids[name] = _decode(raw[name])
                if ids[name] is None:
                    problems.append(f"{name} is not a safe header value")
        if not any(name in raw for name in ID_FIELDS):
            return EMPTY_SCOPE  # nothing carried: not an error
        if self._keys:
            reason = problems[0] if problems else self._verify(raw)
            if reason is not None:
                self.rejected = reason
                _reject(f"inbound scope ignored: {reason}")
                return EMPTY_SCOPE
        elif problems:
            _reject(f"inbound scope fields ignored: {'; '.join(problems)}")
        return self._scope(raw, ids)

    def _verify(self, raw: Mapping[str, str]) -> str | None:
        """Return why the signature does not hold, or None when it verifies."""
        issued_at, signature = raw.get(ISSUED_AT), raw.get(SIGNATURE)
        if signature is None or issued_at is None:
            return "the signature or its issue time is missing"
        if not _SIGNATURE.fullmatch(signature) or not _ISSUED_AT.fullmatch(issued_at):
            return "the signature or its issue time is malformed"
        # Every key is tried (no early exit), so timing does not tell which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(_sign(key, raw, issued_at), signature)
        if not matched:
            return "the signature does not verify"
        age = time.time() - int(issued_at)
        if age > self._max_age:
            return f"the signature expired ({age:.0f} s old, max_age={self._max_age})"
        if age < -MAX_CLOCK_SKEW_SECONDS:
            return f"the signature was issued {-age:.0f} s in the future"
        return None

    def _scope(self, raw: Mapping[str, str], ids: Mapping[str, str | None]) -> Scope:
        workspace, organization = ids.get(WORKSPACE), ids.get(ORGANIZATION)
        if (WORKSPACE in raw and workspace is None) or (
            ORGANIZATION in raw and organization is None
        ):
            workspace = organization = None  # one unit: never half of it
        elif (WORKSPACE in raw or ORGANIZATION in raw) and not self._trust_tenant:
            # Unsigned: any client could have chosen the tenant its records land in.
            workspace = organization = None
            _reject(
                "inbound workspace/organization ignored: unsigned tenant ids are applied "
                "only with extract(..., secret=...) or trust_tenant=True"
            )
        actor = None
        actor_type, actor_id = ids.get(ACTOR_TYPE), ids.get(ACTOR_ID)
        if self._trust_actor and actor_type is not None and actor_id is not None:
            if actor_type == "user":
                actor = Actor.user(actor_id)
            elif actor_type == "service":
                actor = Actor.service(actor_id)
            else:
                _reject(f"inbound actor type {actor_type!r} is not user or service")
        elif self._trust_actor and (ACTOR_TYPE in raw) != (ACTOR_ID in raw):
            _reject("inbound actor has a type or an id but not both")
        return Scope(
            actor=actor,
            workspace=workspace,
            organization=organization,
            request_id=ids.get(REQUEST_ID),
        )


def _outbound(current: Scope) -> dict[str, str]:
    """Encode the scope's ids (and only its ids) as header values."""
    raw: dict[str, str] = {}
    workspace = _encode(current.workspace) if current.workspace else None
    organization = _encode(current.organization) if current.organization else None
    if (current.workspace and workspace is None) or (current.organization and organization is None):
        _reject("workspace or organization is too long to propagate; neither was sent")
    else:
        if workspace:
            raw[WORKSPACE] = workspace
        if organization:
            raw[ORGANIZATION] = organization
    actor = current.actor
    if actor is not None and actor.id is not None and actor.type in _PROPAGATED_ACTOR_TYPES:
        actor_id = _encode(actor.id)
        if actor_id is None:
            _reject("the actor id is too long to propagate; it was not sent")
        else:
            raw[ACTOR_TYPE] = actor.type
            raw[ACTOR_ID] = actor_id
    if current.request_id:
        request_id = _encode(current.request_id)
        if request_id is None:
            _reject("the request id is too long to propagate; it was not sent")
        else:
            raw[REQUEST_ID] = request_id
    return raw


def _reject(reason: str) -> None:
    count_error("propagation", _Rejected(reason))


def _keys(secret: object, function: str, *, rotation: bool) -> tuple[bytes, ...]:
    if secret is None:
        return ()
    items = secret if rotation and isinstance(secret, (list, tuple)) else (secret,)
    keys = []
    for item in items:
        if isinstance(item, str) and item:
            keys.append(item.encode())
        elif isinstance(item, bytes) and item:
            keys.append(item)
        else:
            accepted = "a non-empty str or bytes" + (" (or a list of them)" if rotation else "")
            raise ConfigurationError(f"{function}(secret=...) takes {accepted}, got {item!r}")
    if not keys:
        raise ConfigurationError(f"{function}(secret=...) got an empty list of secrets")
    return tuple(keys)


def inject(carrier: MutableMapping[str, str], *, secret: str | bytes | None = None) -> None:
    """Write the current scope's ids into *carrier*, a dict of headers (or message headers).

    Writes workspace, organization, actor type and id (users and service accounts only) and
    request id; never names, emails, the IP address, the user agent or metadata. Fields a
    previous ``inject`` left in *carrier* are removed first. With *secret*, adds an issue
    time and an HMAC-SHA256 signature that ``extract(..., secret=...)`` verifies. Values too
    long to send are left out and counted in ``obs.stats()["internal_errors"]``.

    Call it where you mean to: it is not a global propagator, so nothing is sent to
    third parties behind your back. Thread- and task-safe; reads the caller's scope.

    Raises:
        ConfigurationError: *carrier* is not a mutable mapping, or *secret* is not a
            non-empty str or bytes.
    """
    if not isinstance(carrier, MutableMapping):
        raise ConfigurationError(
            f"inject(carrier) takes a dict of headers, got {type(carrier).__name__}"
        )
    keys = _keys(secret, "inject", rotation=False)
    with guard("propagation"):
        _ScopePropagator(keys).inject(carrier)


def extract(
    carrier: Mapping[str, Any] | Any,
    *,
    trust_actor: bool = False,
    secret: str | bytes | Sequence[str | bytes] | None = None,
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
    trust_tenant: bool = False,
) -> _ScopeManager:
    """Open a scope from the ids in *carrier*: ``with obs.propagation.extract(headers): ...``.

    *carrier* is a dict, a framework's headers object (names are matched ignoring case) or
    None. Workspace and organization arrive as one unit and replace the enclosing scope's
    pair, but only when the carrier is signed (*secret*) or ``trust_tenant=True``:
    otherwise any client could file its records under another tenant, so unsigned tenant
    ids are dropped, logged and counted in ``obs.stats()["internal_errors"]``, and the
    enclosing scope's pair stays. The request id is kept. The inbound actor is applied
    only with ``trust_actor=True``; otherwise the enclosing scope's actor stays. Use the
    two trust flags without a secret only where no outside client can reach the receiver.

    With *secret* (or a list of secrets, for rotation), nothing carried is applied unless the
    signature verifies and its issue time is at most *max_age* seconds old (and not more
    than a minute ahead): a tampered, unsigned, expired or replayed-too-late carrier opens
    an empty scope. Rejected or malformed values are never raised: they are dropped,
    logged and counted in ``obs.stats()["internal_errors"]``.

    Works with ``with`` and ``async with``; the scope is task- and thread-local like
    ``obs.scope``.

    Raises:
        ConfigurationError: *secret*, *max_age*, *trust_actor* or *trust_tenant* has the
            wrong type, or *carrier* has no ``get``.
    """
    if not isinstance(trust_actor, bool):
        raise ConfigurationError(f"extract(trust_actor=...) takes a bool, got {trust_actor!r}")
    if not isinstance(trust_tenant, bool):
        raise ConfigurationError(f"extract(trust_tenant=...) takes a bool, got {trust_tenant!r}")
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not max_age > 0:
        raise ConfigurationError(
            f"extract(max_age=...) takes a positive number of seconds, got {max_age!r}"
        )
    keys = _keys(secret, "extract", rotation=True)
    if carrier is not None and not callable(getattr(carrier, "get", None)):
        raise ConfigurationError(
            f"extract(carrier) takes a dict or a headers object, got {type(carrier).__name__}"
        )
    carried = EMPTY_SCOPE
    if carrier is not None:
        with guard("propagation"):
            propagator = _ScopePropagator(
                keys, trust_actor=trust_actor, trust_tenant=trust_tenant, max_age=max_age
            )
            carried = propagator.extract(carrier).get(_CARRIED_KEY, EMPTY_SCOPE)  # type: ignore[assignment]
    return scope(
        actor=carried.actor,
        workspace=carried.workspace,
        organization=carried.organization,
        request_id=carried.request_id,
    )
