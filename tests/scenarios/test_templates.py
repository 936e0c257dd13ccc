"""Templates in the shapes real applications give them: ORM rows and bad format specs.

Issue 14, items 9 and 18. The ORM tests run SQLAlchemy's ORM on a SQLite file and on the
real PostgreSQL server (the ``database_url`` fixture); an engine event counts every statement,
so a template that reaches the database is seen, not guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import obs_sdk as obs
from obs_sdk.testing import capture

USER = obs.Actor.user("u_1", name="Ada")


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "app_tpl_owners"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Doc(Base):
    __tablename__ = "app_tpl_docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("app_tpl_owners.id"))
    owner: Mapped[Owner] = relationship()  # lazy="select": loaded on first access


@dataclass
class App:
    """The app's engine on the database obs_sdk writes to, and every statement it ran."""

    engine: sa.Engine
    url: str
    statements: list[str] = field(default_factory=list)

    def records(self) -> list[obs.AuditRecord]:
        assert obs.flush(10.0)
        return obs.audit_log(self.engine, order="asc")


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    """One owner and one document in the app's tables; obs_sdk configured on the same database."""
    obs.configure(database=database_url)
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Doc(id=1, title="Q3 plan", owner=Owner(id=1, name="Ada")))
        session.commit()
    app = App(engine, database_url)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        app.statements.append(statement)

    yield app
    obs.shutdown(10.0)  # deliver what a failed test left queued before its tables go
    Base.metadata.drop_all(engine)
    engine.dispose()


def unloaded_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "obs_sdk" and r.levelno == logging.WARNING and "not loaded" in r.getMessage()
    ]


class TestOrmRowsAreReadAsLoaded:
    """A template reads an ORM instance's loaded state only: never a query, never a BEGIN."""

    @pytest.mark.parametrize("when", ["success", "always"])
    def test_a_result_field_on_an_expired_row_is_null_and_counted_without_a_query(
        self, app: App, when: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """{result.title} on a row expired by commit: NULL, counted, warned; no SELECT, no BEGIN."""
        with Session(app.engine) as session:
            doc = session.get(Doc, 1)
            assert doc is not None
            session.commit()  # expire_on_commit: every attribute is unloaded now
            assert not session.in_transaction()

            @obs.audited(
                "doc.read", when=when, resource=obs.Resource("doc", "1", name="{result.title}")
            )
            def latest() -> Doc:
                return doc

            app.statements.clear()
            with obs.scope(actor=USER):
                assert latest() is doc
            assert app.statements == []
            assert not session.in_transaction()
        (record,) = app.records()
        assert (record.resource_id, record.resource_name) == ("1", None)
        assert obs.stats()["unloaded"] == 1
        (warning,) = unloaded_warnings(caplog)
        assert "doc.read" in warning
        assert "resource.name" in warning
        assert "{result.title}" in warning

    def test_an_argument_field_through_a_lazy_relationship_never_loads_it(
        self, app: App, caplog: pytest.LogCaptureFixture
    ) -> None:
        """{doc.owner.name} with owner not loaded: NULL and counted, no lazy-load SELECT.

        Once the app loaded the relationship itself, the same template renders it.
        """

        @obs.audited(
            "doc.viewed",
            resource=obs.Resource("doc", "{doc.id}", name="{doc.title}"),
            metadata={"by": "{doc.owner.name}", "title": "{result.title}"},
        )
        def view(doc: Doc) -> Doc:
            return doc

        with Session(app.engine) as session, obs.scope(actor=USER):
            doc = session.get(Doc, 1)
            assert doc is not None
            app.statements.clear()
            assert view(doc) is doc
            assert app.statements == []
            assert doc.owner.name == "Ada"  # the app loads the relationship itself
            app.statements.clear()
            view(doc)
            assert app.statements == []
        first, second = app.records()
        assert (first.resource_id, first.resource_name) == ("1", "Q3 plan")
        assert first.metadata == {"by": None, "title": "Q3 plan"}
        assert second.metadata == {"by": "Ada", "title": "Q3 plan"}
        assert obs.stats()["unloaded"] == 1
        (warning,) = unloaded_warnings(caplog)
        assert "doc.viewed" in warning and "metadata.by" in warning
        assert "{doc.owner.name}" in warning

    def test_detached_rows_read_as_loaded_and_new_rows_read_normally(self, app: App) -> None:
        """Detached: loaded columns render, unloaded ones are NULL (no error). Transient and
        pending instances have no database state: their attributes are read, nothing flushed."""
        with Session(app.engine) as session:
            detached = session.get(Doc, 1)
            assert detached is not None
        # The session closed: title was loaded, the owner never was.

        @obs.audited("doc.drafted", metadata={"title": "{doc.title}", "owner": "{doc.owner.name}"})
        def draft(doc: Doc) -> Doc:
            return doc

        with Session(app.engine) as session, obs.scope(actor=USER):
            pending = Doc(title="pending", owner=Owner(name="Cy"))
            session.add(pending)
            app.statements.clear()
            draft(detached)
            draft(Doc(title="transient", owner=Owner(name="Bo")))
            draft(pending)
            assert app.statements == []  # no lazy load, no autoflush
        records = app.records()
        assert [r.metadata for r in records] == [
            {"title": "Q3 plan", "owner": None},
            {"title": "transient", "owner": "Bo"},
            {"title": "pending", "owner": "Cy"},
        ]
        assert obs.stats()["unloaded"] == 1
        assert obs.stats()["internal_errors"] == 0


class TestOneBadFormatSpec:
    """A format spec that does not fit its value costs that key alone, never its neighbours."""

    @pytest.mark.swallows_internal_errors
    def test_a_bad_metadata_key_is_null_and_the_others_are_kept(self, database_url: str) -> None:
        """{n:%Y} on an int: metadata.n is NULL (counted); the other keys reach the database."""
        obs.configure(database=database_url)

        @obs.audited(
            "report.made",
            resource=obs.Resource("report", "{n}"),
            metadata={"year": "{n:%Y}", "n": "{n}", "label": "r-{n:03d}", "kind": "monthly"},
        )
        def report(n: int) -> int:
            return n

        with obs.scope(actor=USER):
            assert report(7) == 7
        engine = sa.create_engine(database_url)
        try:
            assert obs.flush(10.0)
            (record,) = obs.audit_log(engine)
        finally:
            engine.dispose()
        assert record.resource_id == "7"
        assert record.metadata == {"year": None, "n": 7, "label": "r-007", "kind": "monthly"}
        assert obs.stats()["internal_errors"] == 1

    @pytest.mark.swallows_internal_errors
    def test_a_bad_property_is_null_and_the_others_are_kept(self) -> None:
        """The same for @tracked properties (a None property is omitted from the event)."""

        @obs.tracked("report_made", properties={"year": "{n:%Y}", "n": "{n}", "kind": "monthly"})
        def report(n: int) -> int:
            return n

        with capture() as cap, obs.scope(actor=USER):
            report(7)
        assert [e["properties"] for e in cap.events] == [{"n": 7, "kind": "monthly"}]
        assert obs.stats()["internal_errors"] == 1
