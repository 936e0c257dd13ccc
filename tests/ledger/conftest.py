"""Fixtures of the ledger tests: a configured database, a key pair, a plain engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import obs_sdk as obs
from tests.ledger.helpers import keypair


@pytest.fixture
def key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair (private PEM, public PEM)."""
    return keypair()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """obs_sdk configured on the database; a separate engine on it for tests to read and tamper."""
    obs.configure(database_url, handle_signals=False)
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()
