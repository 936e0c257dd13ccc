"""The insert at the caller's commit, seen from outside: who sees it, and one taken id.

At the commit, obs_sdk inserts the records the transaction held through the driver's own
cursor when nothing watches SQLAlchemy run statements (it costs as much again as SQLite's
insert itself). These tests pin what must not change with that: an app's statement
listener and SQL logging still see the insert, and a single record whose id is taken is
written under a new id rather than skipped. On a SQLite file and on the real PostgreSQL
server, read back with a connection of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import obs_sdk as obs
from obs_sdk.testing import IncrementingIds
from tests.support.databases import configured_app_engine

pytestmark = pytest.mark.acceptance


class Base(DeclarativeBase):
    """The application's own models (their own registry)."""


class Note(Base):
    __tablename__ = "app_seen_notes"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(100))


@pytest.fixture
def app_engine(database_url: str) -> Iterator[sa.Engine]:
    """The application's engine, its table, and obs_sdk configured on the same database."""
    yield from configured_app_engine(database_url, Base.metadata)


@obs.audited("note.written", resource=obs.Resource("note", "{note_id}"))
def write(session: Session, note_id: str) -> None:
    session.add(Note(id=note_id, text="hello"))


USER = obs.Actor.user("u_1")


def commit_one(engine: sa.Engine, note_id: str) -> None:
    """One request: a session, the scope, the call, the commit."""
    with Session(engine) as session, obs.scope(actor=USER, session=session):
        write(session, note_id)
        session.commit()


def trail(engine: sa.Engine) -> list[str | None]:
    assert obs.flush(timeout=10.0)
    return [r.resource_id for r in obs.audit_log(engine, limit=10_000, order="asc")]


def audit_inserts(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith('INSERT INTO "OBS_AUDIT_LOG"')]


class TestWhoSeesTheInsert:
    def test_a_statement_listener_of_the_app_sees_it(self, app_engine: sa.Engine) -> None:
        """A query logger or timer on the engine (before_cursor_execute) sees the commit's
        insert, as it sees the app's own statements."""
        seen: list[str] = []

        def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        sa.event.listen(app_engine, "before_cursor_execute", note)
        try:
            commit_one(app_engine, "n_1")
        finally:
            sa.event.remove(app_engine, "before_cursor_execute", note)
        assert len(audit_inserts(seen)) == 1
        assert trail(app_engine) == ["n_1"]

    def test_sql_logging_shows_it(
        self, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """SQL logging on (the sqlalchemy.engine logger at INFO, what echo=True sets): the
        commit's insert is logged with the app's statements."""
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            commit_one(app_engine, "n_1")
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")]
        assert len(audit_inserts(logged)) == 1
        assert trail(app_engine) == ["n_1"]

    def test_a_listener_on_the_connection_alone_sees_it(self, app_engine: sa.Engine) -> None:
        """A listener of after_cursor_execute on the session's connection (not the engine):
        obs_sdk's own listener on the engine is not the only one, so the insert shows."""
        seen: list[str] = []

        def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        with Session(app_engine) as session, obs.scope(actor=USER, session=session):
            sa.event.listen(session.connection(), "after_cursor_execute", note)
            write(session, "n_1")
            session.commit()
        assert len(audit_inserts(seen)) == 1
        assert trail(app_engine) == ["n_1"]


class TestIds:
    @pytest.mark.swallows_internal_errors
    def test_a_single_record_whose_id_is_taken_is_written_under_a_new_id(
        self, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """One record at the commit (no RETURNING: its row count says whether it went in)
        whose id a record before it took: written under a new id, logged, counted."""
        obs.configure(app_engine, id_factory=IncrementingIds())
        commit_one(app_engine, "n_1")
        obs.configure(app_engine, id_factory=IncrementingIds())  # id 1 again
        commit_one(app_engine, "n_2")
        assert trail(app_engine) == ["n_1", "n_2"]
        assert obs.stats()["internal_errors"] == 1
        assert "ids collided" in caplog.text
