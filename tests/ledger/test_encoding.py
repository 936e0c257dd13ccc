"""The ledger's building blocks against their RFCs: RFC 8785 canonical JSON, RFC 9162 trees."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obs_sdk._seals._canonical import canonical, canonical_number
from obs_sdk._seals._leaf import leaf_bytes
from obs_sdk._seals._merkle import leaf_hash, levels, node_hash, path, root, root_from_path

# RFC 8785 appendix B: IEEE 754 bit patterns and their ECMAScript text.
NUMBERS = {
    "0000000000000000": "0",
    "8000000000000000": "0",
    "0000000000000001": "5e-324",
    "8000000000000001": "-5e-324",
    "7fefffffffffffff": "1.7976931348623157e+308",
    "ffefffffffffffff": "-1.7976931348623157e+308",
    "4340000000000000": "9007199254740992",
    "c340000000000000": "-9007199254740992",
    "4430000000000000": "295147905179352830000",
    "44b52d02c7e14af5": "9.999999999999997e+22",
    "44b52d02c7e14af6": "1e+23",
    "44b52d02c7e14af7": "1.0000000000000001e+23",
    "444b1ae4d6e2ef4e": "999999999999999700000",
    "444b1ae4d6e2ef4f": "999999999999999900000",
    "444b1ae4d6e2ef50": "1e+21",
    "3eb0c6f7a0b5ed8c": "9.999999999999997e-7",
    "3eb0c6f7a0b5ed8d": "0.000001",
    "41b3de4355555553": "333333333.3333332",
    "41b3de4355555554": "333333333.33333325",
    "41b3de4355555555": "333333333.3333333",
    "41b3de4355555556": "333333333.3333334",
    "41b3de4355555557": "333333333.33333343",
    "becbf647612f3696": "-0.0000033333333333333333",
    "43143ff3c1cb0959": "1424953923781206.2",
}


class TestCanonical:
    """canonical() writes RFC 8785's bytes."""

    @pytest.mark.parametrize(("bits", "text"), NUMBERS.items())
    def test_numbers(self, bits: str, text: str) -> None:
        """Each double of the RFC's table is written as ECMAScript writes it."""
        assert canonical_number(struct.unpack(">d", bytes.fromhex(bits))[0]) == text

    def test_rfc_example(self) -> None:
        """The RFC's section 3.2.2 example object, byte for byte."""
        value = json.loads(
            '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
            ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
            ' "literals": [null, true, false]}'
        )
        assert (
            canonical(value)
            == (
                '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
            ).encode()
        )

    def test_keys_sorted_by_utf16(self) -> None:
        """Keys sort by UTF-16 code units: an emoji (surrogates) before U+FB33 (section 3.2.3)."""
        value = {
            "\u20ac": 1,
            "\r": 2,
            "\ufb33": 3,
            "1": 4,
            "\U0001f600": 5,
            "\u0080": 6,
            "\u00f6": 7,
        }
        keys = list(json.loads(canonical(value)))
        assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]

    def test_refuses_what_json_lacks(self) -> None:
        """NaN, infinities, non-string keys and lone surrogates are errors, not guesses."""
        for bad in (float("nan"), float("inf"), {1: 2}, "\ud800", {"a": object()}):
            with pytest.raises(ValueError):
                canonical(bad)

    def test_large_integers_keep_their_digits(self) -> None:
        """2**60 and 2**60 + 1 encode differently (RFC 8785 would round both)."""
        assert canonical(2**60) != canonical(2**60 + 1)

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**53), 2**53)
            | st.text()
            | st.floats(allow_nan=False, allow_infinity=False),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=20,
        )
    )
    def test_round_trips_to_the_same_value(self, value: object) -> None:
        """Any JSON value parses back equal, and encoding is idempotent."""
        encoded = canonical(value)
        assert canonical(json.loads(encoded)) == encoded


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1, written recursively as the RFC states it."""
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 section 2.1.3.1 PATH(m, D[n]), recursively."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*reference_path(m, leaves[:k]), reference_root(leaves[k:])]
    return [*reference_path(m - k, leaves[k:]), reference_root(leaves[:k])]


class TestMerkle:
    """The level-by-level tree equals RFC 9162's recursive one, and its proofs check."""

    @pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 33])
    def test_root_and_every_path(self, size: int) -> None:
        """Root and inclusion path of every leaf match the RFC's definitions."""
        leaves = [f"leaf {i}".encode() for i in range(size)]
        hashes = [leaf_hash(x) for x in leaves]
        tree = levels(hashes)
        assert root(hashes) == reference_root(leaves)
        for m in range(size):
            assert path(tree, m) == reference_path(m, leaves)
            assert root_from_path(hashes[m], m, size, path(tree, m)) == root(hashes)

    def test_a_wrong_leaf_or_index_fails(self) -> None:
        """A changed leaf, another index or a short path does not reach the root."""
        hashes = [leaf_hash(bytes([i])) for i in range(6)]
        tree, top = levels(hashes), root(hashes)
        assert root_from_path(leaf_hash(b"x"), 2, 6, path(tree, 2)) != top
        assert root_from_path(hashes[2], 3, 6, path(tree, 2)) != top
        assert root_from_path(hashes[2], 2, 6, path(tree, 2)[:-1]) != top
        assert root_from_path(hashes[2], 6, 6, path(tree, 2)) is None

    def test_empty_tree(self) -> None:
        """No leaves: SHA-256 of nothing (RFC 9162)."""
        assert root([]) == hashlib.sha256(b"").digest()


def test_import_obs_sdk_leaves_cryptography_alone() -> None:
    """import obs_sdk does not import cryptography (only sealing and verifying need it)."""
    code = "import sys, obs_sdk; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class TestLeaf:
    """The leaf's fast encoding is exactly RFC 8785 of the leaf object."""

    @given(
        st.dictionaries(
            st.sampled_from(["id", "action", "metadata", "ip", "organization_id"]),
            st.none()
            | st.integers()
            | st.text()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.dictionaries(
                st.text(), st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            ),
        ),
        st.dictionaries(st.sampled_from(["actor_email", "ip"]), st.text("0123456789abcdef")),
    )
    def test_leaf_bytes_is_canonical(
        self, public: dict[str, object], commitments: dict[str, str]
    ) -> None:
        """leaf_bytes(record, commitments) == canonical({"commitments", "record", "v": 1})."""
        body: dict[str, object] = {"v": 1, "record": public}
        if commitments:
            body["commitments"] = commitments
        assert leaf_bytes(public, commitments) == canonical(body)
