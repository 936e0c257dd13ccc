"""Ed25519 keys for seals: loading, key ids, signing and checking.

``cryptography`` is imported here, on first use, never at ``import obs_sdk``: only the
processes that seal or verify need it (the ``seal`` extra).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from obs_sdk.exceptions import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = ["generate_key", "key_id", "private_key", "public_keys", "sign", "signature_ok"]


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError(package="cryptography", extra="seal") from None
    return ed25519


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def private_key(key: object, where: str = "seal(key=...)") -> Ed25519PrivateKey:
    """Load an Ed25519 private key: the key object, PEM (str or bytes) or 32 raw bytes.

    Raises:
        ConfigurationError: *key* is not an Ed25519 private key; the message says what is.
    """
    ed25519 = _ed25519()
    loaded = _load(
        key,
        ed25519.Ed25519PrivateKey,
        ed25519.Ed25519PrivateKey.from_private_bytes,
        lambda pem: _serialization().load_pem_private_key(pem, password=None),
        f"{where} could not read the key",
        "an unencrypted PEM Ed25519 private key (e.g. from `obs-sdk keygen`)",
    )
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        return cast("Ed25519PrivateKey", loaded)
    if loaded is not None:
        raise ConfigurationError(
            f"{where} takes an Ed25519 private key, got a {type(loaded).__name__}"
        )
    raise ConfigurationError(
        f"{where} takes an Ed25519 private key (PEM, 32 raw bytes or the key object), "
        f"got {type(key).__name__}"
    )


def _public_key(key: object, where: str) -> Ed25519PublicKey:
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return cast("Ed25519PublicKey", key.public_key())
    loaded = _load(
        key,
        ed25519.Ed25519PublicKey,
        ed25519.Ed25519PublicKey.from_public_bytes,
        _serialization().load_pem_public_key,
        f"{where} could not read the public key",
        "a PEM Ed25519 public key",
    )
    if isinstance(loaded, ed25519.Ed25519PublicKey):
        return cast("Ed25519PublicKey", loaded)
    raise ConfigurationError(
        f"{where} takes an Ed25519 public key (PEM, 32 raw bytes or the key object), "
        f"or a list of them, got {type(key).__name__}"
    )


def _load(
    key: object,
    kind: type,
    raw: Callable[[bytes], object],
    pem: Callable[[bytes], object],
    failed: str,
    expected: str,
) -> object:
    """Return *key* if it is a *kind*, else what its 32 raw bytes or its PEM text hold.

    None when *key* is neither a key object nor text nor bytes.

    Raises:
        ConfigurationError: *failed* (what could not be read), why, and what to pass.
    """
    if isinstance(key, kind):
        return key
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)):
        return None
    if len(key) == 32:  # noqa: PLR2004  (raw Ed25519 keys, private and public, are 32 bytes)
        return raw(bytes(key))
    try:
        return pem(bytes(key))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"{failed} ({exc}); pass {expected}, its 32 raw bytes, or the key object"
        ) from exc


def public_keys(keys: object, where: str = "verify(public_key=...)") -> dict[str, Ed25519PublicKey]:
    """Load one public key or several (key rotation) into ``{key_id: key}``."""
    items: Iterable[object]
    if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Iterable):
        items = [keys]
    else:
        items = list(keys)
    loaded = [_public_key(k, where) for k in items]
    if not loaded:
        raise ConfigurationError(f"{where} needs at least one public key")
    return {key_id(k): k for k in loaded}


def _raw_public(key: Ed25519PublicKey) -> bytes:
    s = _serialization()
    raw: bytes = key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return raw


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Name a key: the first 16 hex digits of SHA-256 over its raw public bytes."""
    public = key.public_key() if isinstance(key, _ed25519().Ed25519PrivateKey) else key
    return hashlib.sha256(_raw_public(cast("Ed25519PublicKey", public))).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    """Sign *message*; return the signature in hex."""
    return key.sign(message).hex()


def signature_ok(key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    """Return whether *signature* (hex) is *key*'s signature of *message*."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_key() -> tuple[bytes, bytes]:
    """Return a new Ed25519 key pair as (private PEM, public PEM); for ``obs-sdk keygen``."""
    key = _ed25519().Ed25519PrivateKey.generate()
    s = _serialization()
    private_pem: bytes = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    public_pem: bytes = key.public_key().public_bytes(
        s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem
