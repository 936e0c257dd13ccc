"""PostgreSQL fixtures and server controls for tests marked ``postgres``.

``scripts/test`` starts a throwaway server and exports two variables:

- ``OBS_TEST_POSTGRES_URL``: the SQLAlchemy URL of database ``obs_test`` on it;
- ``OBS_TEST_PG_DIR``: the server's directory, which ``scripts/pg`` takes to stop,
  start or restart it (outage tests).

Import the fixtures into ``tests/conftest.py``::

    from _postgres import postgres_engine, postgres_url  # noqa: F401

A missing variable fails the test (``pytest.fail``) rather than skipping it: nothing is
skipped in CI, and a suite run without PostgreSQL must not look green.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_SCRIPT = REPO_ROOT / "scripts" / "pg"

# Tables that tests create: obs_sdk's own (default prefix) and the test apps'.
TEST_TABLE_PREFIXES = ("obs_", "app_")


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: PostgreSQL tests need the server that "
            "scripts/test starts. Run the suite with scripts/test "
            "(e.g. scripts/test tests/acceptance).",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """Return the URL of the test database; fail when scripts/test did not start one."""
    return _require_env("OBS_TEST_POSTGRES_URL")


def _run_pg(command: str) -> None:
    pg_dir = _require_env("OBS_TEST_PG_DIR")
    proc = subprocess.run(
        ["bash", str(PG_SCRIPT), command, pg_dir],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/pg {command} {pg_dir} exited {proc.returncode}:\n{proc.stderr}",
            pytrace=False,
        )


def stop_postgres() -> None:
    """Stop the test server (fast shutdown: open connections are cut)."""
    _run_pg("stop")


def start_postgres() -> None:
    """Start the test server again, on the same port, after :func:`stop_postgres`."""
    _run_pg("start")


def restart_postgres() -> None:
    """Stop and start the test server: every open connection breaks, as in an outage."""
    _run_pg("restart")


def _connect_for_cleanup(url: str) -> sa.Connection:
    # NullPool: cleanup never reuses a connection a test may have broken, e.g. across
    # a restart_postgres().
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return engine.connect()
    except sa.exc.OperationalError:
        # A test that stopped the server and failed before starting it again must not
        # break every later test: start it (a no-op when running) and retry once.
        start_postgres()
        return engine.connect()


def drop_test_tables(url: str) -> list[str]:
    """Drop every table named ``obs_*`` or ``app_*``; return their names."""
    with _connect_for_cleanup(url) as conn:
        # Fail loudly instead of hanging when a leaked connection still holds a lock
        # on one of the tables.
        conn.execute(sa.text("SET lock_timeout = '10s'"))
        names = [
            name
            for name in sa.inspect(conn).get_table_names()
            if name.startswith(TEST_TABLE_PREFIXES)
        ]
        preparer = conn.dialect.identifier_preparer
        for name in names:
            quoted = preparer.quote(name)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {quoted} CASCADE"))
        conn.commit()
    return names


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[sa.Engine]:
    """Yield an Engine on the test database; drop the test's obs_/app_ tables after it.

    Tables are dropped before the test too, so one test that bypassed this fixture
    cannot leak state into the next. The engine is disposed before the drop, so its
    pooled connections hold no locks on the tables.
    """
    drop_test_tables(postgres_url)
    engine = sa.create_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()
        drop_test_tables(postgres_url)
