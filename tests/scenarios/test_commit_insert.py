"""The insert at the caller's commit, one driver statement: what it must keep (issue 17's cost).

Held records go in with the delivery sink's multi-row ``INSERT ... ON CONFLICT DO NOTHING
RETURNING id``: on SQLite with no savepoint (a statement is atomic), on PostgreSQL inside
one (any error there aborts the transaction). These are the shapes that would show a
shortcut: an insert PostgreSQL refuses, more records than one statement carries with taken
ids among them, and the same through an ``AsyncSession``. On a SQLite file and on the real
PostgreSQL server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import obs_sdk as obs
from obs_sdk.testing import IncrementingIds
from tests.support.databases import configured_app_engine

pytestmark = pytest.mark.acceptance

USER = obs.Actor.user("u_1")
MANY = 120  # more rows than one SQLite statement of the commit insert carries (45)


class Base(DeclarativeBase):
    """The application's own models (their own registry)."""


class Note(Base):
    __tablename__ = "app_commit_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(100))


@pytest.fixture
def app_engine(database_url: str) -> Iterator[sa.Engine]:
    """The application's engine, its tables, and obs_sdk configured on the same database."""
    yield from configured_app_engine(database_url, Base.metadata)


@obs.audited("note.written", resource=obs.Resource("note", "{key}"), metadata={"text": "{text}"})
def write(key: str, text: str = "") -> None:
    return None


def trail(engine: sa.Engine) -> list[str | None]:
    assert obs.flush(timeout=10.0)
    return sorted(r.resource_id or "" for r in obs.audit_log(engine, limit=10_000))


def notes(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(Note.id).order_by(Note.id)).scalars())


REFUSE = {
    "sqlite": [
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON obs_audit_log "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON obs_audit_log "
        "FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ],
}
ALLOW = {
    "sqlite": ["DROP TRIGGER refuse_audit"],
    "postgresql": ["DROP TRIGGER refuse_audit ON obs_audit_log", "DROP FUNCTION refuse_audit()"],
}


@pytest.mark.swallows_internal_errors
def test_an_insert_the_database_refuses_leaves_the_callers_commit_whole(
    app_engine: sa.Engine,
) -> None:
    """The audit table refuses the insert (a trigger the app's transaction created: any
    error a database may raise). On PostgreSQL the error would abort the caller's
    transaction but for the savepoint; on SQLite the failed statement alone is undone. The
    caller's rows, flushed before the insert and at the commit after it, are committed."""
    dialect = app_engine.dialect.name
    try:
        with Session(app_engine) as session, obs.scope(actor=USER, session=session):
            for statement in REFUSE[dialect]:
                session.execute(sa.text(statement))
            session.add(Note(id=1, text="flushed before"))
            session.flush()
            write("n_1")
            session.add(Note(id=2, text="flushed at the commit"))
            session.commit()
        assert notes(app_engine) == [1, 2]
        obs.flush(timeout=10.0)
        assert obs.stats()["internal_errors"] >= 1  # logged at the commit, never raised
    finally:
        with app_engine.begin() as conn:
            for statement in ALLOW[dialect]:
                conn.execute(sa.text(statement))


@pytest.mark.swallows_internal_errors
def test_many_records_with_taken_ids_are_each_stored_once(app_engine: sa.Engine) -> None:
    """More records than one statement carries, two of whose ids are taken: every record
    is stored exactly once, the two under new ids, counted."""
    obs.configure(app_engine, id_factory=IncrementingIds())
    write("before_0")
    write("before_1")
    assert obs.flush()
    obs.configure(app_engine, id_factory=IncrementingIds())  # ids 1, 2 again
    with Session(app_engine) as session, obs.scope(actor=USER, session=session):
        session.add(Note(id=1, text="a"))
        for i in range(MANY):
            write(f"tx_{i:03d}")
        session.commit()
    assert trail(app_engine) == ["before_0", "before_1", *(f"tx_{i:03d}" for i in range(MANY))]
    assert obs.stats()["internal_errors"] == 2


@pytest.mark.swallows_internal_errors
def test_an_async_session_takes_the_same_insert(database_url: str, app_engine: sa.Engine) -> None:
    """AsyncSession runs the commit in a greenlet: the driver statement goes through the async
    driver (aiosqlite, psycopg async), taken ids included; a rollback still drops them."""
    url = database_url.replace("sqlite://", "sqlite+aiosqlite://", 1).replace(
        "postgresql+psycopg://", "postgresql+psycopg_async://", 1
    )
    obs.configure(app_engine, id_factory=IncrementingIds())
    write("before_0")
    assert obs.flush()
    obs.configure(app_engine, id_factory=IncrementingIds())  # id 1 again

    async def requests() -> None:
        engine = create_async_engine(url)
        sessions = async_sessionmaker(engine)
        try:
            async with sessions() as session:
                with obs.scope(actor=USER, session=session):
                    session.add(Note(id=1, text="a"))
                    write("async_0")
                    write("async_1")
                    await session.commit()
            async with sessions() as session:
                with obs.scope(actor=USER, session=session):
                    session.add(Note(id=2, text="b"))
                    write("rolled_back")
                    await session.flush()
                    await session.rollback()
        finally:
            await engine.dispose()

    asyncio.run(requests())
    assert notes(app_engine) == [1]
    assert trail(app_engine) == ["async_0", "async_1", "before_0"]
    assert obs.stats()["internal_errors"] == 1
    assert obs.stats()["rolled_back"] == 1
