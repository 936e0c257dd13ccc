"""obs.audit_log / obs.aaudit_log: newest first, time-then-id order, cursor paging both ways.

On a SQLite file and on the real PostgreSQL. Records are made with ``configure(clock=...,
id_factory=...)`` so that times tie and ids run against time: an order or a cursor that
followed the id alone, or the time alone, fails here.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk.testing import SteppingClock
from tests.support.databases import async_url

pytestmark = pytest.mark.acceptance

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 1, 1, tzinfo=UTC)  # SteppingClock's default start
N = 13


class FallingIds:
    """Ids that fall as time rises: UUID N, N-1, ... (time order is not id order)."""

    def __init__(self, start: int = 1000) -> None:
        self.next = start

    def __call__(self, time_ns: int) -> uuid.UUID:
        self.next -= 1
        return uuid.UUID(int=self.next)


class PairedClock:
    """Two records per millisecond: ties in occurred_at that the id must break."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return 1_767_225_600_000_000_000 + (self.calls - 1) // 2 * 1_000_000


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def make(n: int = N) -> None:
    """Record *n* audits numbered 0..n-1 in call order (metadata i), then deliver them."""
    with obs.scope(actor=obs.Actor.user("u_1"), organization="org_1"):
        for i in range(n):
            obs.record_audit("file.read", metadata={"i": i})
    assert obs.flush()


def numbers(records: list[obs.AuditRecord]) -> list[int]:
    return [r.metadata["i"] for r in records]


def walk(page_size: int, **kwargs: Any) -> tuple[list[int], int]:
    """Page through audit_log with after=page[-1].id; return the numbers seen and the pages."""
    seen: list[int] = []
    after = None
    pages = 0
    while page := obs.audit_log(limit=page_size, after=after, **kwargs):
        pages += 1
        seen += numbers(page)
        after = page[-1].id
    return seen, pages


class TestOrder:
    """Newest first by default; ordered by occurred_at, then id."""

    def test_newest_first_by_default(self, database_url: str) -> None:
        """audit_log() lists the newest record first."""
        obs.configure(database_url, clock=SteppingClock())
        make()
        assert numbers(obs.audit_log()) == list(reversed(range(N)))

    def test_oldest_first_with_order_asc(self, database_url: str) -> None:
        """order="asc" lists the oldest record first."""
        obs.configure(database_url, clock=SteppingClock())
        make()
        assert numbers(obs.audit_log(order="asc")) == list(range(N))

    def test_time_orders_before_id(self, database_url: str) -> None:
        """Ids that run against time do not reorder the trail: time decides first."""
        obs.configure(database_url, clock=SteppingClock(), id_factory=FallingIds())
        make()
        assert numbers(obs.audit_log(order="asc")) == list(range(N))
        assert numbers(obs.audit_log()) == list(reversed(range(N)))

    def test_id_breaks_ties_in_time(self, database_url: str) -> None:
        """Records of the same instant are ordered by id, in both directions."""
        obs.configure(database_url, clock=PairedClock(), id_factory=FallingIds())
        make()
        # Pairs share a millisecond; within a pair the later call has the lower id.
        pairs_asc = [i ^ 1 if i ^ 1 < N else i for i in range(N)]
        assert numbers(obs.audit_log(order="asc")) == pairs_asc
        assert numbers(obs.audit_log()) == list(reversed(pairs_asc))


class TestCursor:
    """after= continues a listing in its own order, and stays exact across equal times."""

    @pytest.mark.parametrize(
        "clock", [SteppingClock, PairedClock, lambda: SteppingClock(step_ns=0)], ids=str
    )
    @pytest.mark.parametrize("page_size", [1, 2, 5])
    def test_pages_cover_every_record_once_in_both_orders(
        self, database_url: str, clock: Any, page_size: int
    ) -> None:
        """Chained pages list each record exactly once, in order, however many share a time."""
        obs.configure(database_url, clock=clock(), id_factory=FallingIds())
        make()
        full_desc = numbers(obs.audit_log())
        full_asc = numbers(obs.audit_log(order="asc"))
        assert full_desc == list(reversed(full_asc))
        assert sorted(full_asc) == list(range(N))
        assert walk(page_size) == (full_desc, -(-N // page_size))
        assert walk(page_size, order="asc") == (full_asc, -(-N // page_size))

    def test_after_under_desc_gives_older_records(self, database_url: str) -> None:
        """Newest first, after=X lists what is older than X; oldest first, what is newer."""
        obs.configure(database_url, clock=SteppingClock())
        make()
        middle = next(r for r in obs.audit_log() if r.metadata["i"] == 6)
        assert numbers(obs.audit_log(after=middle.id)) == [5, 4, 3, 2, 1, 0]
        assert numbers(obs.audit_log(after=str(middle.id), order="asc")) == list(range(7, N))

    def test_cursor_with_filters_and_time_window(self, database_url: str) -> None:
        """after= combines with filters and since/until."""
        obs.configure(database_url, clock=SteppingClock())
        make()
        since = START + datetime.timedelta(milliseconds=2)
        until = START + datetime.timedelta(milliseconds=10)
        first = obs.audit_log(organization="org_1", since=since, until=until, limit=3)
        assert numbers(first) == [9, 8, 7]
        rest = obs.audit_log(organization="org_1", since=since, until=until, after=first[-1].id)
        assert numbers(rest) == [6, 5, 4, 3, 2]

    def test_unknown_cursor_is_an_error(self, database_url: str) -> None:
        """An after= id that is in no record says so, instead of ending the paging silently."""
        obs.configure(database_url)
        make(2)
        with pytest.raises(obs.ConfigurationError, match="no audit record has the id"):
            obs.audit_log(after=uuid.uuid4())


class TestBinds:
    """Where audit_log reads: the configured database, or the bind given."""

    def test_configured_database_when_no_bind(self, database_url: str, reader: sa.Engine) -> None:
        """Without a bind, the configured database is read; an Engine, Connection, Session too."""
        obs.configure(database_url, clock=SteppingClock())
        make(3)
        assert numbers(obs.audit_log()) == [2, 1, 0]
        assert numbers(obs.audit_log(reader)) == [2, 1, 0]
        with reader.connect() as conn:
            assert numbers(obs.audit_log(conn, limit=1)) == [2]
        with Session(reader) as session:
            assert numbers(obs.audit_log(bind=session, order="asc")) == [0, 1, 2]

    def test_async_twin_reads_async_engines_connections_and_sessions(
        self, database_url: str
    ) -> None:
        """await aaudit_log(...) takes an AsyncEngine, AsyncConnection or AsyncSession."""
        import asyncio

        obs.configure(database_url, clock=SteppingClock())
        make(4)

        async def main() -> list[list[int]]:
            engine = create_async_engine(async_url(database_url))
            try:
                got = [numbers(await obs.aaudit_log(engine))]
                async with engine.connect() as conn:
                    got.append(numbers(await obs.aaudit_log(conn, order="asc", limit=2)))
                async with AsyncSession(engine) as session:
                    page = await obs.aaudit_log(session, limit=2)
                    got.append(numbers(await obs.aaudit_log(session, after=page[-1].id)))
                got.append(numbers(await obs.aaudit_log()))  # the configured (sync) database
            finally:
                await engine.dispose()
            return got

        assert asyncio.run(main()) == [[3, 2, 1, 0], [0, 1], [1, 0], [3, 2, 1, 0]]

    def test_async_twin_uses_the_configured_async_engine(self, database_url: str) -> None:
        """configure(database=AsyncEngine): aaudit_log() with no bind reads through it."""
        import asyncio

        engine = create_async_engine(async_url(database_url))
        obs.configure(engine, clock=SteppingClock())
        make(3)

        async def main() -> list[int]:
            try:
                return numbers(await obs.aaudit_log(order="asc"))
            finally:
                await engine.dispose()

        assert asyncio.run(main()) == [0, 1, 2]


class TestMistakes:
    """Arguments that cannot be right fail with a message that says what to pass."""

    def test_naive_datetimes_are_refused(self, database_url: str) -> None:
        """A naive since/until is a ConfigurationError that asks for an aware datetime."""
        obs.configure(database_url)
        naive = datetime.datetime(2026, 1, 1)
        for kwargs in ({"since": naive}, {"until": naive}):
            with pytest.raises(obs.ConfigurationError, match=r"naive.*aware"):
                obs.audit_log(**kwargs)

    def test_bad_order_and_cursor(self, database_url: str) -> None:
        """order is "desc" or "asc"; after= is a record id."""
        obs.configure(database_url)
        with pytest.raises(obs.ConfigurationError, match=r'"desc".*"asc"'):
            obs.audit_log(order="newest")  # type: ignore[arg-type]
        with pytest.raises(obs.ConfigurationError, match="record id"):
            obs.audit_log(after="not-an-id")

    def test_unconfigured_without_bind(self) -> None:
        """No bind and no configure(): say to do either."""
        with pytest.raises(obs.ConfigurationError, match=r"configure\(database=...\).*bind"):
            obs.audit_log()

    def test_async_bind_to_the_sync_function(self, database_url: str) -> None:
        """An async engine given to audit_log points to aaudit_log."""
        obs.configure(database_url)
        engine = create_async_engine(async_url(database_url))
        with pytest.raises(obs.ConfigurationError, match="aaudit_log"):
            obs.audit_log(engine)


@pytest.mark.postgres
class TestPostgresIndexes:
    """On PostgreSQL, the listings people run are served by an index, with no sort step."""

    @pytest.mark.parametrize(
        "filters",
        [{}, {"organization": "org_1"}, {"actor_id": "u_1"}, {"workspace": "ws_1"}],
    )
    @pytest.mark.parametrize("order", ["desc", "asc"])
    def test_listing_uses_an_index_in_order(
        self, postgres_url: str, filters: dict[str, str], order: str
    ) -> None:
        """EXPLAIN of a page after a cursor: an index scan gives the order, no Sort node."""
        obs.configure(postgres_url)
        make(3)
        engine = sa.create_engine(postgres_url, poolclass=sa.NullPool)
        sent: list[tuple[str, Any]] = []

        def keep(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            sent.append((statement, parameters))

        try:
            after = obs.audit_log(engine)[1].id
            sa.event.listen(engine, "before_cursor_execute", keep)
            obs.audit_log(engine, order=order, after=after, **filters)  # type: ignore[arg-type]
            sa.event.remove(engine, "before_cursor_execute", keep)
            (statement, parameters), *_ = (s for s in sent if "ORDER BY" in s[0])
            with engine.connect() as conn:
                # A tiny table: a sort costs nothing, so ask whether the index *can* serve the
                # order (a sort still appears when no path avoids it).
                for setting in ("seqscan", "bitmapscan", "sort"):
                    conn.exec_driver_sql(f"SET enable_{setting} = off")
                plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars())
        finally:
            engine.dispose()
        assert "Index" in plan, plan
        assert "Sort" not in plan, plan
