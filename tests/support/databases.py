"""The application side of a test database: its engine next to obs_sdk's, sync or async."""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa

import obs_sdk as obs


def async_url(url: str) -> str:
    """The async-driver spelling of a sync test URL (aiosqlite / psycopg async)."""
    if url.startswith("sqlite"):
        return url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    return url.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1)


def configured_app_engine(url: str, app_metadata: sa.MetaData) -> Iterator[sa.Engine]:
    """Yield the application's engine with its tables, obs_sdk configured on the same database.

    For a fixture: ``yield from configured_app_engine(database_url, Base.metadata)``; the
    tables are dropped and obs_sdk shut down afterwards.
    """
    engine = sa.create_engine(url)
    app_metadata.create_all(engine)
    obs.configure(engine)
    yield engine
    obs.shutdown()
    app_metadata.drop_all(engine)
    engine.dispose()
