"""RFC 9162 (Certificate Transparency 2.0) Merkle trees over SHA-256.

Leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``; a tree
of n leaves splits at the largest power of two below n (section 2.1.1). The two prefixes
keep a leaf from passing for a node. Built level by level: an odd node at the end of a
level moves up unchanged, which gives the same tree as the recursive definition and
lets one pass yield the root and every inclusion path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["leaf_hash", "levels", "node_hash", "path", "root", "root_from_path"]

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """Return ``SHA-256(0x00 || leaf)``."""
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def levels(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Return the tree's levels, leaves first and the root's one-element level last."""
    level = list(hashes)
    out = [level]
    while len(level) > 1:
        up = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        out.append(up)
        level = up
    return out


def root(hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash of the leaf hashes (RFC 9162 MTH; SHA-256("") if none)."""
    if not hashes:
        return EMPTY_ROOT
    return levels(hashes)[-1][0]


def path(tree: list[list[bytes]], index: int) -> list[bytes]:
    """Return the inclusion path of leaf *index* in a tree made by :func:`levels`.

    The sibling at each level, bottom up; a node with no sibling (the odd one at the end
    of its level) adds nothing. That is RFC 9162's PATH(m, D[n]).
    """
    if not 0 <= index < len(tree[0]):
        raise IndexError(f"leaf {index} is not in a tree of {len(tree[0])} leaves")
    out = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            out.append(level[sibling])
        index //= 2
    return out


def root_from_path(leaf: bytes, index: int, size: int, audit_path: Sequence[bytes]) -> bytes | None:
    """Return the root that *audit_path* proves for leaf hash *leaf*, or None if malformed.

    RFC 9162 section 2.1.3.2, step by step; compare the result with the signed root.
    """
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in audit_path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
