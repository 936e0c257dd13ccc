"""Shared fixtures: a clean obs_sdk per test, loud internal errors, and databases.

Every test starts unconfigured with an empty queue. Internal errors that obs_sdk swallows
fail the test at teardown unless it is marked ``swallows_internal_errors`` (the tests of
the swallowing path itself).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import obs_sdk as obs
from obs_sdk import _guard
from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._scope import _context
from tests._postgres import postgres_engine, postgres_url  # noqa: F401  (fixtures)

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _clean_obs(request: pytest.FixtureRequest) -> Iterator[list[tuple[str, BaseException]]]:
    """Reset obs_sdk around each test and collect the internal errors it swallows."""
    swallowed: list[tuple[str, BaseException]] = []
    _guard.set_test_hook(lambda site, exc: swallowed.append((site, exc)))
    yield swallowed
    obs.shutdown(timeout=10.0)
    dispatcher.queue.clear()
    dispatcher.capture = None
    _context.provider = None
    _guard.set_test_hook(None)
    _guard.reset()
    if swallowed and request.node.get_closest_marker("swallows_internal_errors") is None:
        site, exc = swallowed[0]
        pytest.fail(
            f"obs_sdk swallowed {len(swallowed)} internal error(s); first in {site}: "
            f"{type(exc).__name__}: {exc} (mark the test swallows_internal_errors if intended)",
            pytrace=False,
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file database in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'obs.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on a SQLite file and on the real PostgreSQL server (tables dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'obs.db'}"
        return
    engine = request.getfixturevalue("postgres_engine")
    yield engine.url.render_as_string(hide_password=False)
