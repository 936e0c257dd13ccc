"""Framework-free HTTP helpers shared by the ASGI and WSGI middlewares.

Client IP through trusted proxies, request id, user agent and the PostHog
browser identity, plus the option checks both middlewares run at construction.
Nothing here imports a web framework: the middlewares hand in plain strings or
bytes taken from an ASGI scope or a WSGI environ, and get back plain values for
``obs.scope(...)``. Every function that reads a request header is total: any
header value, however malformed, yields a value or None and never raises, so a
hostile request can never break the request it arrived with (SPEC rule 4).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from urllib.parse import unquote

from obs_sdk import Actor, scope
from obs_sdk._integration_api import count_error
from obs_sdk.exceptions import ConfigurationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REQUEST_ID_LENGTH = 128
"""Longest inbound request id that is kept (issue #8); longer ones are replaced."""

MAX_USER_AGENT_LENGTH = 512
"""User agents are cut to this many characters: real ones stay well under 300."""

MAX_DISTINCT_ID_LENGTH = 200
"""PostHog rejects a ``distinct_id`` longer than 200 characters at ingestion."""

MAX_COOKIE_VALUE_LENGTH = 4096
"""Browsers refuse a cookie beyond ~4 KB, so a longer one was not set by posthog-js."""

POSTHOG_COOKIELESS_SENTINEL = "$posthog_cookieless"
"""Sent by posthog-js instead of a distinct id in cookieless mode: not an identity."""

# Visible ASCII only (0x21-0x7e): no spaces, no control characters, so an echoed id can
# neither split a response header nor forge a log line, and it stays one token in logs.
_REQUEST_ID_RE = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID_LENGTH)

# Ports have at most five digits; a longer run is not a port but garbage.
_MAX_PORT_DIGITS = 5

# Prefix length of the IPv4-mapped block ::ffff:0:0/96 (RFC 4291 section 2.5.5.2).
_MAPPED_PREFIX = 96

# An HTTP field name is a token (RFC 9110 section 5.1).
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# Optional whitespace around a field value is not part of it (RFC 9110 section 5.5).
_OWS = " \t"


def _normalize(address: IPAddress) -> IPAddress:
    """Return the IPv4 address behind an IPv4-mapped IPv6 address, else *address*.

    A dual-stack listener reports ``10.0.0.1`` as ``::ffff:10.0.0.1``; without this,
    a trusted ``10.0.0.0/8`` would never match it, and the two spellings of one
    client would be recorded as two addresses.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    """Return whether *text* is a port: ASCII digits only, unlike ``str.isdigit``."""
    return 0 < len(text) <= _MAX_PORT_DIGITS and text.isascii() and text.isdigit()


def parse_ip(value: str | bytes | None) -> IPAddress | None:
    """Parse one address as found in a socket peer or an ``X-Forwarded-For`` entry.

    Accepts ``203.0.113.5``, ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:8443``
    and ``203.0.113.5:8443`` (some load balancers append the client's port), with
    surrounding whitespace. A bare IPv6 address is never read as having a port,
    because its last group would be ambiguous. IPv4-mapped IPv6 addresses come back
    as IPv4. Anything else (``unknown``, an RFC 7239 ``_obfuscated`` name, a host
    name, garbage) is None. Never raises. Thread-safe.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        # Header bytes are latin-1 by ASGI and PEP 3333 convention; an IP is ASCII.
        value = value.decode("latin-1")
    text = value.strip(_OWS)
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        # After the bracket only ":<port>" may follow.
        if end < 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port(port):
            return None
        text = host
        try:
            return ipaddress.IPv4Address(text)
        except ValueError:
            return None
    try:
        return _normalize(ipaddress.ip_address(text))
    except ValueError:
        return None


class TrustedProxies:
    """An immutable set of proxy addresses and networks, parsed once at construction.

    Entries are IPv4 or IPv6 addresses or CIDR networks, as strings or
    :mod:`ipaddress` objects (``"10.0.0.0/8"``, ``"2001:db8::/32"``, ``"127.0.0.1"``).
    A network with host bits set (``"10.0.0.1/8"``) is rejected rather than guessed at:
    it is almost always a typo for ``10.0.0.0/8`` or for the single host. A single
    string counts as one entry, not as a sequence of characters.

    Membership (``address in trusted``) takes an address object or a string and is
    False for anything that is not an address. Thread-safe: nothing changes after
    construction.

    Raises:
        ConfigurationError: an entry is not an address or a network; the message
            names the entry. (A ``ValueError``.)
    """

    __slots__ = ("_addresses", "_entries", "_networks")

    def __init__(self, entries: Iterable[str | IPAddress | IPNetwork] = ()) -> None:
        if isinstance(entries, str):
            entries = [entries]
        addresses: set[IPAddress] = set()
        networks: list[IPNetwork] = []
        kept: list[str] = []
        for entry in entries:
            network = self._parse_entry(entry)
            kept.append(str(network))
            if network.num_addresses == 1:
                # Single hosts go in a set: the common case costs one hash lookup.
                addresses.add(network.network_address)
            else:
                networks.append(network)
        self._addresses = frozenset(addresses)
        self._networks = tuple(networks)
        self._entries = tuple(kept)

    @staticmethod
    def _parse_entry(entry: object) -> IPNetwork:
        """Parse one configured entry into a network, mapped IPv6 folded into IPv4."""
        if not isinstance(
            entry,
            (
                str,
                ipaddress.IPv4Address,
                ipaddress.IPv6Address,
                ipaddress.IPv4Network,
                ipaddress.IPv6Network,
            ),
        ):
            raise ConfigurationError(
                f"trusted_proxies entry {entry!r} is of type {type(entry).__name__}: "
                "give IP addresses or CIDR networks as strings, e.g. '10.0.0.0/8'"
            )
        try:
            network = ipaddress.ip_network(
                entry.strip() if isinstance(entry, str) else entry, strict=True
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"trusted_proxies entry {entry!r} is not an IP address or CIDR network "
                f"({exc}); give e.g. '10.0.0.0/8', '2001:db8::/32' or '127.0.0.1'"
            ) from None
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= _MAPPED_PREFIX:
            mapped = network.network_address.ipv4_mapped
            if mapped is not None:
                # Peers are folded to IPv4 by _normalize: fold the entry the same way.
                network = ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED_PREFIX))
        return network

    def __contains__(self, address: object) -> bool:
        if isinstance(address, (str, bytes)):
            address = parse_ip(address)
        elif isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            address = _normalize(address)
        else:
            return False
        if address is None:
            return False
        if address in self._addresses:
            return True
        # ipaddress compares versions before masking, so mixing families is safe.
        return any(address in network for network in self._networks)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustedProxies):
            return NotImplemented
        return set(self._entries) == set(other._entries)

    def __hash__(self) -> int:
        return hash(frozenset(self._entries))

    def __repr__(self) -> str:
        return f"TrustedProxies({list(self._entries)!r})"


def _forwarded_entries(values: Iterable[str | bytes]) -> list[str]:
    """Split several ``X-Forwarded-For`` field values into one list, in order.

    Several fields with the same name are one comma-separated list, in order
    (RFC 9110 section 5.3). Empty elements are dropped, as RFC 9110 section 5.6.1.2
    asks of recipients: a proxy appending to an empty header writes ``", 1.2.3.4"``.
    """
    entries: list[str] = []
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for part in text.split(","):
            entry = part.strip(_OWS)
            if entry:
                entries.append(entry)
    return entries


def client_ip(
    peer: str | bytes | None,
    forwarded_for: Iterable[str | bytes] | str | bytes | None,
    trusted: TrustedProxies,
) -> str | None:
    """Return the client's IP address, read through trusted proxies only.

    ``X-Forwarded-For`` is read only when the socket *peer* is a trusted proxy;
    otherwise any client could write its own header, so the peer is the answer.
    Behind a trusted peer the entries are walked from the right (the entry the
    nearest proxy appended) and the first one that is not itself a trusted proxy
    is the client. If every entry is a trusted proxy, the left-most is returned.
    An entry that is not a valid IP address ends the walk and the nearest trusted
    proxy seen so far is returned: nothing to the left of garbage can be trusted.

    The result is the normalized text form (``::ffff:10.0.0.1`` becomes
    ``10.0.0.1``; IPv6 is compressed; brackets and ports are dropped). It is None
    when the peer is unknown or not an IP address (a Unix socket, or a test client
    that calls itself ``"testclient"``): the ``ip`` column holds addresses only.
    Never raises. Thread-safe.

    Args:
        peer: the socket peer's host: ASGI ``scope["client"][0]``, WSGI
            ``REMOTE_ADDR``.
        forwarded_for: every ``X-Forwarded-For`` field value, in the order received
            (a single value is accepted too).
        trusted: the proxies allowed to speak for the client.
    """
    peer_address = parse_ip(peer)
    if peer_address is None:
        return None
    if not trusted or forwarded_for is None or peer_address not in trusted:
        return str(peer_address)
    if isinstance(forwarded_for, (str, bytes)):
        forwarded_for = [forwarded_for]
    nearest_trusted = peer_address
    for entry in reversed(_forwarded_entries(forwarded_for)):
        address = parse_ip(entry)
        if address is None:
            return str(nearest_trusted)
        if address not in trusted:
            return str(address)
        nearest_trusted = address
    return str(nearest_trusted)


def request_id(inbound: str | bytes | None) -> str:
    """Return the inbound request id if it is acceptable, otherwise a new one.

    An inbound id is kept when, after trimming surrounding spaces and tabs, it is
    1 to 128 visible ASCII characters (0x21-0x7e). Spaces inside are not allowed:
    the id is echoed in a response header and written to logs, where it must stay
    one token. A new id is 32 lowercase hex digits from ``uuid4``. Never raises.
    Thread-safe.
    """
    if isinstance(inbound, str):
        # Non-ASCII text is refused before encoding, so nothing is replaced into "?".
        inbound = inbound.encode("ascii") if inbound.isascii() else None
    if inbound is not None:
        raw = inbound.strip(b" \t")
        if _REQUEST_ID_RE.fullmatch(raw):
            return raw.decode("ascii")
    return uuid.uuid4().hex


def header_text(value: str | bytes | None, *, limit: int | None = None) -> str | None:
    """Decode a header value for recording: UTF-8 where valid, trimmed, cut to *limit*.

    ASGI gives raw bytes and WSGI a latin-1 decoded string (PEP 3333); both are
    turned back into the bytes on the wire and decoded as UTF-8 with replacement,
    so a non-ASCII user agent reads the same under both servers. Empty is None.
    Never raises. Thread-safe.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            # Not a PEP 3333 string (a test built the environ by hand): take it as text.
            raw = value.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace").strip(_OWS)
    if limit is not None:
        text = text[:limit]
    return text or None


def user_agent(value: str | bytes | None) -> str | None:
    """Return the ``User-Agent`` to record, cut to ``MAX_USER_AGENT_LENGTH``.

    Never raises. Thread-safe.
    """
    return header_text(value, limit=MAX_USER_AGENT_LENGTH)


def _valid_distinct_id(value: object) -> str | None:
    """Return *value* if it can be a PostHog distinct id, else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if (
        not value
        or len(value) > MAX_DISTINCT_ID_LENGTH
        or value == POSTHOG_COOKIELESS_SENTINEL
        or not value.isprintable()
    ):
        return None
    return value


def _cookie_pairs(cookie_header: str) -> Iterator[tuple[str, str]]:
    """Yield ``(name, value)`` pairs from a ``Cookie`` header, skipping malformed ones.

    A hand-rolled split rather than ``http.cookies.SimpleCookie``, which stops at
    the first cookie it cannot parse and would hide a valid PostHog cookie behind
    another site's odd one.
    """
    for pair in cookie_header.split(";"):
        name, sep, value = pair.partition("=")
        if sep:
            yield name.strip(_OWS), value.strip(_OWS)


def _is_posthog_cookie_name(name: str) -> bool:
    """Return whether *name* is ``ph_<token>_posthog`` with a non-empty token."""
    return name.startswith("ph_") and name.endswith("_posthog") and len(name) > len("ph__posthog")


def posthog_cookie_name(project_api_key: str) -> str:
    """Return the name posthog-js gives its cookie for *project_api_key*.

    posthog-js names it ``"ph_" + token + "_posthog"`` after replacing ``+``, ``/``
    and ``=`` in the token by ``PL``, ``SL`` and ``EQ`` (``PostHogPersistence`` in
    posthog-js ``posthog-persistence.ts``).
    """
    token = project_api_key.replace("+", "PL").replace("/", "SL").replace("=", "EQ")
    return f"ph_{token}_posthog"


def posthog_distinct_id(
    cookie_header: str | bytes | None,
    header_value: str | bytes | None,
    *,
    project_api_key: str | None = None,
) -> str | None:
    """Return the browser's PostHog distinct id, or None.

    The ``X-POSTHOG-DISTINCT-ID`` header (sent by posthog-js when tracing headers
    are on) wins; otherwise the posthog-js persistence cookie is read. That cookie
    is named ``ph_<project_api_key>_posthog`` and holds ``encodeURIComponent(
    JSON.stringify(props))`` with ``props["distinct_id"]`` (``cookieStore._set`` in
    posthog-js ``storage.ts``). Without *project_api_key*, any cookie named
    ``ph_…_posthog`` is read, the first valid one winning.

    A value is ignored when it is not a non-empty printable string of at most 200
    characters, when it is the cookieless sentinel ``$posthog_cookieless``, or when
    the cookie is oversized or not URL-encoded JSON. Never raises. Thread-safe.
    """
    if header_value is not None:
        found = _valid_distinct_id(header_text(header_value))
        if found is not None:
            return found
    if not cookie_header:
        return None
    if isinstance(cookie_header, bytes):
        cookie_header = cookie_header.decode("latin-1")
    wanted = posthog_cookie_name(project_api_key) if project_api_key else None
    for name, value in _cookie_pairs(cookie_header):
        if wanted is not None:
            if name != wanted:
                continue
        elif not _is_posthog_cookie_name(name):
            continue
        found = _distinct_id_from_cookie(value)
        if found is not None:
            return found
    return None


def _distinct_id_from_cookie(value: str) -> str | None:
    """Decode one posthog-js cookie value and return its valid ``distinct_id``."""
    if len(value) > MAX_COOKIE_VALUE_LENGTH:
        return None
    try:
        props = json.loads(unquote(value, errors="strict"))
    except (ValueError, RecursionError):
        # ValueError covers bad JSON and bad percent-encoded UTF-8 alike.
        return None
    if not isinstance(props, dict):
        return None
    return _valid_distinct_id(props.get("distinct_id"))


# Option checks shared by the ASGI and WSGI middlewares.


def header_name(value: object) -> str:
    """Check a configured header name and return it as given.

    Raises:
        ConfigurationError: *value* is not an HTTP field name.
    """
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ConfigurationError(
            f"request_id_header={value!r} is not an HTTP header name; give e.g. 'x-request-id'"
        )
    return value


def check_resolver(
    resolver: object,
    *,
    allow_async: bool,
    option: str = "actor",
    returns: str = "an obs.Actor or None",
) -> None:
    """Check a resolver option (``actor=``, ``organization=``, ...) at construction time.

    *option* names the keyword in the message, *returns* what the resolver gives back.

    Raises:
        ConfigurationError: *resolver* is neither None nor callable, or is a coroutine
            function where only sync resolvers can run (WSGI).
    """
    if resolver is None:
        return
    if not callable(resolver):
        raise ConfigurationError(
            f"{option}={resolver!r} is not callable; pass a function that takes the request "
            f"and returns {returns}"
        )
    # type(resolver).__call__ catches an object whose __call__ is an async method.
    if not allow_async and (
        inspect.iscoroutinefunction(resolver)
        or inspect.iscoroutinefunction(type(resolver).__call__)
    ):
        raise ConfigurationError(
            f"{option}={resolver!r} is async, but a WSGI request runs synchronously; "
            "pass a plain function"
        )


def checked_actor(result: object, site: str) -> Actor | None:
    """Return *result* if it is an ``Actor`` or None; count anything else."""
    if result is None or isinstance(result, Actor):
        return result
    count_error(
        site,
        TypeError(
            f"the actor resolver returned {type(result).__name__}, "
            "not an obs.Actor or None; the request proceeds anonymous"
        ),
    )
    return None


def checked_tenant(result: object, site: str) -> str | None:
    """Return *result* if it is a tenant id (a non-empty string) or None; count anything else.

    An empty string is None, as ``obs.scope(organization="")`` reads it.
    """
    if result is None or isinstance(result, str):
        return result or None
    count_error(
        site,
        TypeError(
            f"the tenant resolver returned {type(result).__name__}, not a string or None; "
            "the request proceeds without that tenant field"
        ),
    )
    return None


def enter_scope(
    stack: ExitStack,
    actor: Actor | None,
    distinct_id: str | None,
    request_id: str,
    fields: Mapping[str, str | None],
    site: str,
) -> None:
    """Enter the request's ``obs.scope(...)`` on *stack*, whatever the middleware.

    No actor is the browser's anonymous one (*distinct_id*: its PostHog id). A failure is
    counted under *site* and the request runs unscoped rather than failing (SPEC rule 4).
    """
    try:
        if actor is None:
            actor = Actor.anonymous(distinct_id=distinct_id)
        stack.enter_context(scope(actor=actor, request_id=request_id, **fields))
    except Exception as exc:
        count_error(site, exc)
