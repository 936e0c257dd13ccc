"""Framework-free request helpers: client IP, request id, user agent, PostHog id."""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obs_sdk.exceptions import ConfigurationError
from obs_sdk.integrations._http import (
    MAX_USER_AGENT_LENGTH,
    TrustedProxies,
    client_ip,
    parse_ip,
    posthog_cookie_name,
    posthog_distinct_id,
    request_id,
    user_agent,
)

TRUSTED = TrustedProxies(["10.0.0.0/8", "192.0.2.1", "2001:db8:1::/48"])

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
any_ip = st.one_of(ipv4, ipv6)
untrusted_ip = any_ip.filter(lambda a: a not in TRUSTED)
trusted_ip = st.one_of(
    st.builds(lambda n: ipaddress.IPv4Address((10 << 24) + n), st.integers(0, 2**24 - 1)),
    st.just(ipaddress.IPv4Address("192.0.2.1")),
    st.builds(
        lambda n: ipaddress.IPv6Address((0x20010DB80001 << 80) + n),
        st.integers(0, 2**80 - 1),
    ),
)
header_text = st.text(max_size=300) | st.binary(max_size=300)


def spelled(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Return how a proxy may write *address* in X-Forwarded-For."""
    return str(address) if address.version == 4 else f"[{address}]"


def normalized(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Return *address* as client_ip records it (IPv4-mapped IPv6 as IPv4)."""
    return str(parse_ip(str(address)))


def encode_uri_component(text: str) -> str:
    """Percent-encode like JavaScript's encodeURIComponent."""
    return quote(text, safe="-_.!~*'()")


def posthog_cookie(props: object, key: str = "phc_test") -> str:
    """Build the cookie posthog-js writes: encodeURIComponent(JSON.stringify(props))."""
    payload = json.dumps(props, ensure_ascii=False, separators=(",", ":"))
    return f"{posthog_cookie_name(key)}={encode_uri_component(payload)}"


class TestTrustedProxies:
    """TrustedProxies parses its entries once and answers membership."""

    def test_addresses_and_networks_of_both_families(self) -> None:
        """IPv4 and IPv6 addresses and CIDR networks are all accepted."""
        trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32"])
        assert "127.0.0.1" in trusted
        assert "10.255.0.3" in trusted
        assert "::1" in trusted
        assert "2001:db8:ffff::9" in trusted
        assert "11.0.0.1" not in trusted
        assert "2001:db9::1" not in trusted

    def test_address_objects_are_accepted_as_entries(self) -> None:
        """ipaddress objects work as entries as well as strings."""
        trusted = TrustedProxies(
            [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_network("198.51.100.0/24")]
        )
        assert "192.0.2.7" in trusted
        assert "198.51.100.200" in trusted

    def test_a_single_string_is_one_entry(self) -> None:
        """A bare string is one entry, not a sequence of one-character entries."""
        assert "10.1.2.3" in TrustedProxies("10.0.0.0/8")

    def test_whitespace_around_an_entry_is_ignored(self) -> None:
        """Entries read from a config file may carry spaces."""
        assert "10.1.2.3" in TrustedProxies([" 10.0.0.0/8 "])

    @pytest.mark.parametrize(
        "entry",
        ["not-an-ip", "", "10.0.0.1/8", "10.0.0.0/33", "10.0.0.1,10.0.0.2", "::1/129"],
    )
    def test_a_bad_entry_is_a_configuration_error_naming_it(self, entry: str) -> None:
        """A bad entry fails at construction with ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match=re.escape(repr(entry))):
            TrustedProxies(["127.0.0.1", entry])

    def test_a_non_string_entry_is_a_configuration_error(self) -> None:
        """A number is not silently read as a packed address."""
        with pytest.raises(ConfigurationError, match="is of type int"):
            TrustedProxies([167772161])  # type: ignore[list-item]

    def test_the_configuration_error_is_a_value_error(self) -> None:
        """Callers that catch ValueError keep working."""
        with pytest.raises(ValueError, match="not an IP address"):
            TrustedProxies(["proxy.internal"])

    def test_ipv4_mapped_peers_match_ipv4_entries(self) -> None:
        """A dual-stack socket's ::ffff:a.b.c.d matches the IPv4 network."""
        assert "::ffff:10.1.2.3" in TrustedProxies(["10.0.0.0/8"])

    def test_ipv4_mapped_entries_match_ipv4_peers(self) -> None:
        """An entry written as ::ffff:a.b.c.d matches the plain IPv4 peer."""
        assert "10.1.2.3" in TrustedProxies(["::ffff:10.1.2.3"])
        assert "10.1.2.3" in TrustedProxies(["::ffff:10.0.0.0/104"])

    def test_non_addresses_are_never_members(self) -> None:
        """Membership of garbage or a non-address object is False, not an error."""
        assert "garbage" not in TRUSTED
        assert None not in TRUSTED
        assert 42 not in TRUSTED

    def test_empty_is_falsy(self) -> None:
        """No entries means no proxy is trusted."""
        assert not TrustedProxies()
        assert TrustedProxies(["::1"])

    def test_equal_when_the_same_networks(self) -> None:
        """Two instances built from the same entries compare equal."""
        assert TrustedProxies(["10.0.0.0/8", "::1"]) == TrustedProxies(["::1", "10.0.0.0/8"])


class TestParseIp:
    """parse_ip reads the address spellings proxies and servers use."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("203.0.113.5", "203.0.113.5"),
            ("  203.0.113.5\t", "203.0.113.5"),
            ("203.0.113.5:8443", "203.0.113.5"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:DB8:0:0::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:8443", "2001:db8::1"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            (b"198.51.100.7", "198.51.100.7"),
        ],
    )
    def test_accepted_spellings(self, text: str | bytes, expected: str) -> None:
        """Brackets, ports and whitespace are dropped; IPv6 is compressed."""
        assert str(parse_ip(text)) == expected

    @pytest.mark.parametrize(
        "text",
        [
            None,
            "",
            "unknown",
            "_hidden",
            "example.com",
            "203.0.113.5:",
            "203.0.113.5:http",
            "203.0.113.5:123456",
            "203.0.113.5:٣",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[203.0.113.5]:",
            "999.1.1.1",
        ],
    )
    def test_everything_else_is_none(self, text: str | None) -> None:
        """Names, obfuscated identifiers and malformed ports are not addresses."""
        assert parse_ip(text) is None

    @given(header_text)
    def test_never_raises(self, value: str | bytes) -> None:
        """Any text or bytes parses to an address or None."""
        parse_ip(value)


class TestClientIp:
    """client_ip trusts X-Forwarded-For only through trusted proxies (issue #8)."""

    def test_untrusted_peer_is_the_client_whatever_the_header_says(self) -> None:
        """A forged X-Forwarded-For from an untrusted peer is ignored."""
        assert client_ip("203.0.113.9", ["1.1.1.1"], TRUSTED) == "203.0.113.9"

    def test_no_trusted_proxies_means_the_peer(self) -> None:
        """Without trusted proxies the header is never read."""
        assert client_ip("10.0.0.1", ["1.1.1.1"], TrustedProxies()) == "10.0.0.1"

    def test_trusted_peer_without_header_is_the_client(self) -> None:
        """A request straight from a trusted host records that host."""
        assert client_ip("10.0.0.1", None, TRUSTED) == "10.0.0.1"
        assert client_ip("10.0.0.1", [], TRUSTED) == "10.0.0.1"

    def test_right_most_untrusted_entry_is_the_client(self) -> None:
        """The entry the nearest proxy wrote wins over anything the client prepended."""
        header = "6.6.6.6, 203.0.113.9, 10.0.0.7"
        assert client_ip("10.0.0.1", [header], TRUSTED) == "203.0.113.9"

    def test_every_entry_trusted_gives_the_left_most(self) -> None:
        """An all-internal chain records its origin, the left-most entry."""
        assert client_ip("10.0.0.1", ["10.0.0.3, 10.0.0.2"], TRUSTED) == "10.0.0.3"

    def test_an_invalid_entry_stops_at_the_nearest_trusted_proxy(self) -> None:
        """Garbage ends the walk; the last trusted hop seen is recorded."""
        header = "203.0.113.9, unknown, 10.0.0.7"
        assert client_ip("10.0.0.1", [header], TRUSTED) == "10.0.0.7"
        assert client_ip("10.0.0.1", ["unknown"], TRUSTED) == "10.0.0.1"

    def test_several_headers_are_one_list_in_order(self) -> None:
        """Repeated X-Forwarded-For fields concatenate in the order received."""
        values = ["6.6.6.6, 203.0.113.9", "10.0.0.7"]
        assert client_ip("10.0.0.1", values, TRUSTED) == "203.0.113.9"
        values = ["10.0.0.7", "203.0.113.9"]
        assert client_ip("10.0.0.1", values, TRUSTED) == "203.0.113.9"

    def test_a_single_header_value_is_accepted(self) -> None:
        """A plain string is one field value, not a sequence of characters."""
        assert client_ip("10.0.0.1", "203.0.113.9", TRUSTED) == "203.0.113.9"
        assert client_ip("10.0.0.1", b"203.0.113.9", TRUSTED) == "203.0.113.9"

    def test_empty_list_elements_are_skipped(self) -> None:
        """Empty elements (", 1.2.3.4") are ignored, as RFC 9110 asks."""
        assert client_ip("10.0.0.1", [" , 203.0.113.9,,"], TRUSTED) == "203.0.113.9"

    def test_ipv6_with_brackets_and_ports(self) -> None:
        """Bracketed IPv6 entries with ports are read and recorded compressed."""
        header = "[2001:db8:2::5]:51000, [2001:db8:1::9]"
        assert client_ip("2001:db8:1::1", [header], TRUSTED) == "2001:db8:2::5"

    def test_ipv4_mapped_peer_is_recorded_as_ipv4(self) -> None:
        """A dual-stack listener's ::ffff:a.b.c.d is recorded as a.b.c.d."""
        assert client_ip("::ffff:203.0.113.9", None, TRUSTED) == "203.0.113.9"
        assert client_ip("::ffff:10.0.0.1", ["203.0.113.9"], TRUSTED) == "203.0.113.9"

    @pytest.mark.parametrize("peer", [None, "", "testclient", "/run/app.sock"])
    def test_a_peer_that_is_not_an_address_gives_none(self, peer: str | None) -> None:
        """A Unix socket or a named test client records no IP."""
        assert client_ip(peer, ["203.0.113.9"], TRUSTED) is None

    @given(peer=untrusted_ip, values=st.lists(header_text, max_size=4))
    def test_forged_header_from_untrusted_peer_never_matters(
        self, peer: ipaddress.IPv4Address | ipaddress.IPv6Address, values: list[str]
    ) -> None:
        """Whatever an untrusted peer sends, the result is the peer's address."""
        assert client_ip(str(peer), values, TRUSTED) == normalized(peer)

    @given(
        forged=st.lists(st.one_of(any_ip.map(spelled), st.text(max_size=20)), max_size=5),
        client=untrusted_ip,
        proxies=st.lists(trusted_ip, max_size=4),
        peer=trusted_ip,
    )
    def test_client_prepending_anything_cannot_move_the_result(
        self,
        forged: list[str],
        client: ipaddress.IPv4Address | ipaddress.IPv6Address,
        proxies: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
        peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> None:
        """The address the first trusted proxy saw wins over any forged prefix."""
        chain = [*forged, spelled(client), *(spelled(p) for p in proxies)]
        assert client_ip(str(peer), [", ".join(chain)], TRUSTED) == normalized(client)

    @given(peer=header_text | st.none(), values=st.lists(header_text, max_size=4))
    def test_never_raises_and_returns_an_address_or_none(
        self, peer: str | bytes | None, values: list[str | bytes]
    ) -> None:
        """Any peer and any header values give a valid address or None."""
        result = client_ip(peer, values, TRUSTED)
        assert result is None or parse_ip(result) is not None


class TestRequestId:
    """request_id keeps a clean inbound id and replaces anything else."""

    @pytest.mark.parametrize(
        "inbound",
        ["req_9", "a", "x" * 128, "7f0c7e0e-4f2a-4b8e-9a47-2b1f1bd9a0aa", "!~{}[]:;"],
    )
    def test_clean_ids_are_kept(self, inbound: str) -> None:
        """1 to 128 visible ASCII characters are kept as sent."""
        assert request_id(inbound) == inbound

    def test_surrounding_whitespace_is_trimmed(self) -> None:
        """Optional whitespace around a header value is not part of it."""
        assert request_id(" req_9\t") == "req_9"

    def test_bytes_are_accepted(self) -> None:
        """ASGI header bytes work like text."""
        assert request_id(b"req_9") == "req_9"

    @pytest.mark.parametrize(
        "inbound",
        [
            None,
            "",
            "   ",
            "x" * 129,
            "a b",
            "line\nbreak",
            "tab\tinside",
            "nul\x00",
            "del\x7f",
            "café",
            b"caf\xc3\xa9",
            "\ud800",
        ],
    )
    def test_anything_else_is_replaced(self, inbound: str | bytes | None) -> None:
        """Empty, long, spaced, control or non-ASCII ids are replaced by a new one."""
        generated = request_id(inbound)
        assert re.fullmatch(r"[0-9a-f]{32}", generated)

    def test_generated_ids_are_unique(self) -> None:
        """Each generated id is new."""
        assert len({request_id(None) for _ in range(1000)}) == 1000

    @given(header_text | st.none())
    def test_always_a_clean_id(self, inbound: str | bytes | None) -> None:
        """Whatever arrives, the result is 1 to 128 visible ASCII characters."""
        assert re.fullmatch(r"[\x21-\x7e]{1,128}", request_id(inbound))

    @given(
        st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E),
            min_size=1,
            max_size=128,
        )
    )
    def test_every_clean_id_round_trips(self, inbound: str) -> None:
        """Every acceptable inbound id comes back unchanged."""
        assert request_id(inbound) == inbound


class TestUserAgent:
    """user_agent decodes and bounds the User-Agent header."""

    def test_text_is_kept(self) -> None:
        """An ordinary user agent is recorded as sent."""
        assert user_agent("curl/8.5") == "curl/8.5"

    def test_long_values_are_cut(self) -> None:
        """A huge header cannot bloat every record of the request."""
        assert user_agent("x" * 10_000) == "x" * MAX_USER_AGENT_LENGTH

    def test_empty_is_none(self) -> None:
        """No user agent is recorded as NULL, not as an empty string."""
        assert user_agent("") is None
        assert user_agent(None) is None

    def test_wsgi_latin1_and_asgi_bytes_read_the_same(self) -> None:
        """UTF-8 on the wire reads the same from WSGI latin-1 text and ASGI bytes."""
        wire = "Bot/1.0 (ü)".encode()
        assert user_agent(wire.decode("latin-1")) == user_agent(wire) == "Bot/1.0 (ü)"

    @given(header_text)
    def test_never_raises(self, value: str | bytes) -> None:
        """Any header value decodes to bounded text or None."""
        result = user_agent(value)
        assert result is None or len(result) <= MAX_USER_AGENT_LENGTH


class TestPosthogDistinctId:
    """posthog_distinct_id reads the browser's PostHog identity."""

    def test_header_is_read(self) -> None:
        """X-POSTHOG-DISTINCT-ID, sent by posthog-js tracing headers, is used."""
        assert posthog_distinct_id(None, "0190a-anon") == "0190a-anon"

    def test_cookie_is_read(self) -> None:
        """The ph_<key>_posthog cookie holds URL-encoded JSON with distinct_id."""
        cookie = posthog_cookie({"distinct_id": "0190a-anon", "$sesid": [1, "s", 2]})
        assert posthog_distinct_id(f"theme=dark; {cookie}; other=1", None) == "0190a-anon"

    def test_header_wins_over_cookie(self) -> None:
        """The header is the fresher statement, as in posthog-node."""
        cookie = posthog_cookie({"distinct_id": "from-cookie"})
        assert posthog_distinct_id(cookie, "from-header") == "from-header"

    def test_invalid_header_falls_back_to_cookie(self) -> None:
        """An unusable header does not hide a good cookie."""
        cookie = posthog_cookie({"distinct_id": "from-cookie"})
        assert posthog_distinct_id(cookie, "x" * 201) == "from-cookie"

    def test_project_key_selects_its_cookie(self) -> None:
        """With the project key given, only that project's cookie is read."""
        other = posthog_cookie({"distinct_id": "other-project"}, key="phc_other")
        mine = posthog_cookie({"distinct_id": "mine"}, key="phc_mine")
        header = f"{other}; {mine}"
        assert posthog_distinct_id(header, None, project_api_key="phc_mine") == "mine"
        assert posthog_distinct_id(other, None, project_api_key="phc_mine") is None

    def test_cookie_name_follows_posthog_js_token_escaping(self) -> None:
        """posthog-js writes +, / and = in the token as PL, SL and EQ."""
        assert posthog_cookie_name("phc_a+b/c=") == "ph_phc_aPLbSLcEQ_posthog"

    def test_a_broken_cookie_does_not_hide_a_later_good_one(self) -> None:
        """Cookies are read one by one; a malformed neighbour is skipped."""
        good = posthog_cookie({"distinct_id": "good"}, key="phc_b")
        header = f'ph_phc_a_posthog=%7Bnot-json; bad"cookie; {good}'
        assert posthog_distinct_id(header, None) == "good"

    def test_bytes_are_accepted(self) -> None:
        """ASGI header bytes work like text."""
        cookie = posthog_cookie({"distinct_id": "anon"}).encode()
        assert posthog_distinct_id(cookie, None) == "anon"
        assert posthog_distinct_id(None, b"anon") == "anon"

    @pytest.mark.parametrize(
        "props",
        [
            {"distinct_id": ""},
            {"distinct_id": 42},
            {"distinct_id": None},
            {"distinct_id": ["a"]},
            {"distinct_id": "x" * 201},
            {"distinct_id": "line\nbreak"},
            {"distinct_id": "$posthog_cookieless"},
            {"$sesid": [1, "s", 2]},
            ["distinct_id", "anon"],
            "anon",
        ],
    )
    def test_unusable_cookie_values_are_ignored(self, props: object) -> None:
        """Missing, non-string, oversized, control or sentinel ids are ignored."""
        assert posthog_distinct_id(posthog_cookie(props), None) is None

    @pytest.mark.parametrize(
        "cookie",
        [
            "ph_phc_a_posthog=not%20json",
            "ph_phc_a_posthog=%E0%A4%A",
            "ph_phc_a_posthog=%FF",
            "ph__posthog=" + encode_uri_component('{"distinct_id":"a"}'),
            "other=" + encode_uri_component('{"distinct_id":"a"}'),
            "ph_phc_a_posthog="
            + encode_uri_component('{"distinct_id":"a","p":"' + "x" * 5000 + '"}'),
        ],
    )
    def test_malformed_or_foreign_cookies_are_ignored(self, cookie: str) -> None:
        """Bad encoding, bad JSON, oversized or non-PostHog cookies give None."""
        assert posthog_distinct_id(cookie, None) is None

    def test_the_max_length_id_is_kept(self) -> None:
        """An id of exactly 200 characters is accepted."""
        assert posthog_distinct_id(None, "x" * 200) == "x" * 200

    @given(
        st.text(min_size=1, max_size=200).filter(
            lambda s: s.strip() == s and s.isprintable() and s != "$posthog_cookieless"
        )
    )
    def test_any_valid_id_round_trips_through_the_cookie(self, distinct_id: str) -> None:
        """What posthog-js writes for a valid id is read back unchanged."""
        cookie = posthog_cookie({"distinct_id": distinct_id, "$sesid": [0, "s", 0]})
        assert posthog_distinct_id(cookie, None) == distinct_id

    @given(cookie=header_text | st.none(), header=header_text | st.none())
    def test_never_raises(self, cookie: str | bytes | None, header: str | bytes | None) -> None:
        """Any header values give a printable id of at most 200 characters, or None."""
        result = posthog_distinct_id(cookie, header)
        assert result is None or (result.isprintable() and 0 < len(result) <= 200)
