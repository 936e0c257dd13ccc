"""configure(seal_key=..., seal_every=...): sealing on a background thread of obs_sdk's own.

Never on a caller's thread. Each round tries the sealer lock without waiting, so of many
processes configured alike one seals at a time and the others skip the round. Stopping
waits for a round in progress at most the given timeout (the thread is a daemon).
"""

from __future__ import annotations

import datetime
import threading
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from obs_sdk._guard import guard
from obs_sdk._ledger._tables import tables
from obs_sdk._scope._context import suppressed
from obs_sdk._seals._seal import Ledger, seal_pending
from obs_sdk._seals._signing import private_key
from obs_sdk.exceptions import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["BackgroundSealer", "check_seal_settings"]


def check_seal_settings(
    seal_key: object, seal_every: object
) -> tuple[Ed25519PrivateKey, float] | None:
    """Validate configure()'s seal_key / seal_every: both or neither; return (key, seconds)."""
    if seal_key is None and seal_every is None:
        return None
    if seal_key is None or seal_every is None:
        raise ConfigurationError(
            "configure(seal_key=..., seal_every=...) go together: the Ed25519 private key to "
            "sign with and how often to seal (seconds or a timedelta, e.g. 60)"
        )
    seconds = (
        seal_every.total_seconds() if isinstance(seal_every, datetime.timedelta) else seal_every
    )
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigurationError(
            f"configure(seal_every=...) takes seconds (> 0) or a timedelta, got {seal_every!r}"
        )
    return private_key(seal_key, "configure(seal_key=...)"), float(seconds)


class BackgroundSealer:
    """Seals every *every* seconds on thread "obs-sdk-seal" until stopped."""

    def __init__(self, engine: Engine, prefix: str, key: Ed25519PrivateKey, every: float) -> None:
        self._ledger = Ledger(engine, tables(prefix))
        self._key = key
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="obs-sdk-seal", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.seal_now()

    def seal_now(self) -> int:
        """Seal one round unless another sealer holds the lock; errors are logged, counted."""
        with suppressed(), guard("seal"):
            return seal_pending(self._ledger, self._key, wait=False)
        return 0

    def stop(self, timeout: float) -> bool:
        """Stop sealing; wait for a round in progress up to *timeout*; True if it ended."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()
