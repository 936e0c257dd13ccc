"""`@audited(..., changes=...)`: the rows a call wrote, in its audit record (issue 17).

Each test runs an application's models through a real SQLAlchemy session (sync and async)
on a SQLite file and on the real PostgreSQL server, and reads the trail back with
`obs.audit_log`, from the database.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

import obs_sdk as obs
from obs_sdk.testing import capture
from tests.support.databases import async_url, configured_app_engine

pytestmark = pytest.mark.acceptance

SECRET = "pbkdf2$must-never-reach-the-trail"
ADA = obs.Actor.user("u_ada")


class Hex(TypeDecorator[str]):
    """Stores text hex-encoded: the app's own row never holds the secret's bytes as they are,
    so finding them in the database file would mean the audit trail wrote them."""

    impl = sa.String(200)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else value.encode().hex()

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else bytes.fromhex(value).decode()


class Kind(enum.Enum):
    NOTE = "note"
    CONTRACT = "contract"


class Base(DeclarativeBase):
    """The application's models (their own registry)."""


class Document(Base):
    __tablename__ = "app_changes_documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    body: Mapped[str] = mapped_column(sa.Text, default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="draft")
    password_hash: Mapped[str | None] = mapped_column(Hex(), nullable=True)


class Membership(Base):
    __tablename__ = "app_changes_memberships"

    org_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(20))


class Invoice(Base):
    __tablename__ = "app_changes_invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(10, 2))
    ref: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    kind: Mapped[Kind] = mapped_column(sa.Enum(Kind))
    due: Mapped[datetime.datetime] = mapped_column(sa.DateTime)


@pytest.fixture
def app_engine(database_url: str) -> Iterator[sa.Engine]:
    """The application's engine: its tables and obs_sdk's on the same database."""
    yield from configured_app_engine(database_url, Base.metadata)


def trail(engine: sa.Engine) -> dict[str, list[Any] | None]:
    """The changes of every committed record by action, read back from the database."""
    assert obs.flush(timeout=10.0)
    return {r.action: r.changes for r in obs.audit_log(engine, limit=10_000)}


def seed(engine: sa.Engine, *docs: Document) -> None:
    with Session(engine) as session:
        session.add_all(docs)
        session.commit()


@obs.audited("document.edited", changes=True)
def edit(session: Session, doc_id: int, **values: Any) -> None:
    doc = session.get(Document, doc_id)
    assert doc is not None
    for name, value in values.items():
        setattr(doc, name, value)


@obs.audited("document.created", changes=True)
def create(session: Session, title: str) -> int:
    doc = Document(title=title)
    session.add(doc)
    session.flush()
    return doc.id


@obs.audited("document.deleted", changes=True)
def delete(session: Session, doc_id: int) -> None:
    session.delete(session.get(Document, doc_id))


def update_row(doc_id: int, **values: Any) -> dict[str, Any]:
    return {
        "table": "app_changes_documents",
        "pk": {"id": doc_id},
        "op": "update",
        "fields": values,
    }


class TestWhatAChangeShows:
    def test_an_update_of_two_fields_gives_exactly_those_two(self, app_engine: sa.Engine) -> None:
        """Old and new values of the two fields set, and no other field."""
        seed(app_engine, Document(id=1, title="Draft", body="v1"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            edit(session, 1, title="Final", body="v2", status="draft")  # status: unchanged
            session.commit()
        assert trail(app_engine) == {
            "document.edited": [update_row(1, title=["Draft", "Final"], body=["v1", "v2"])]
        }

    def test_an_insert_shows_the_new_values(self, app_engine: sa.Engine) -> None:
        """Flushed during the call: the row as inserted, defaults and generated key included."""
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            doc_id = create(session, "Plan")
            session.commit()
        assert trail(app_engine) == {
            "document.created": [
                {
                    "table": "app_changes_documents",
                    "pk": {"id": doc_id},
                    "op": "insert",
                    "fields": {
                        "id": [None, doc_id],
                        "title": [None, "Plan"],
                        "body": [None, ""],
                        "status": [None, "draft"],
                    },
                }
            ]
        }

    def test_a_delete_shows_the_old_values(self, app_engine: sa.Engine) -> None:
        """Every loaded field, old value first."""
        seed(app_engine, Document(id=7, title="Old", body="text"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            delete(session, 7)
            session.commit()
        assert trail(app_engine) == {
            "document.deleted": [
                {
                    "table": "app_changes_documents",
                    "pk": {"id": 7},
                    "op": "delete",
                    "fields": {
                        "id": [7, None],
                        "title": ["Old", None],
                        "body": ["text", None],
                        "status": ["draft", None],
                        "password_hash": "[REDACTED]",
                    },
                }
            ]
        }

    def test_a_composite_primary_key(self, app_engine: sa.Engine) -> None:
        """Each column of the key, by name."""

        @obs.audited("member.promoted", changes=True)
        def promote(session: Session, org: str, user: str) -> None:
            member = session.get(Membership, (org, user))
            assert member is not None
            member.role = "admin"

        with Session(app_engine) as session:
            session.add(Membership(org_id="org_1", user_id="u_2", role="member"))
            session.commit()
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            promote(session, "org_1", "u_2")
            session.commit()
        assert trail(app_engine)["member.promoted"] == [
            {
                "table": "app_changes_memberships",
                "pk": {"org_id": "org_1", "user_id": "u_2"},
                "op": "update",
                "fields": {"role": ["member", "admin"]},
            }
        ]

    def test_values_are_rendered_like_metadata_values(self, app_engine: sa.Engine) -> None:
        """Decimals, UUIDs, enums and datetimes come back as metadata's would: JSON-safe text."""
        ref = uuid.UUID("12345678-1234-5678-1234-567812345678")
        due = datetime.datetime(2026, 12, 31, 23, 59)

        @obs.audited("invoice.issued", changes=True)
        def issue(session: Session) -> None:
            session.add(
                Invoice(id=1, total=decimal.Decimal("12.50"), ref=ref, kind=Kind.CONTRACT, due=due)
            )

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            issue(session)
            session.commit()
        (row,) = trail(app_engine)["invoice.issued"]  # type: ignore[misc]
        assert row["fields"] == {
            "id": [None, 1],
            "total": [None, "12.50"],
            "ref": [None, str(ref)],
            "kind": [None, "contract"],
            "due": [None, "2026-12-31T23:59:00"],
        }


class TestOnlyTheCallsOwnChanges:
    def test_two_calls_in_one_transaction_each_get_their_own_rows(
        self, app_engine: sa.Engine
    ) -> None:
        """The second call runs while the first one's change is still pending, unflushed."""
        seed(app_engine, Document(id=1, title="a"), Document(id=2, title="b"))

        @obs.audited("first", changes=True)
        def first(session: Session) -> None:
            edit.__wrapped__(session, 1, title="a2")  # type: ignore[attr-defined]

        @obs.audited("second", changes=True)
        def second(session: Session) -> None:
            edit.__wrapped__(session, 2, title="b2")  # type: ignore[attr-defined]
            session.flush()

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            first(session)
            second(session)
            session.commit()
        assert trail(app_engine) == {
            "first": [update_row(1, title=["a", "a2"])],
            "second": [update_row(2, title=["b", "b2"])],
        }

    def test_what_other_code_changed_before_the_call_is_left_out(
        self, app_engine: sa.Engine
    ) -> None:
        """Pending before the call: a field the call leaves alone is not its change, one it
        changes again starts from its value at the call, and a row added before is not its
        insert."""
        seed(app_engine, Document(id=1, title="t0", body="b0"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            doc = session.get(Document, 1)
            assert doc is not None
            doc.title = "t1"
            doc.body = "b1"
            session.add(Document(id=2, title="other"))
            edit(session, 1, body="b2")
            session.commit()
        assert trail(app_engine) == {"document.edited": [update_row(1, body=["b1", "b2"])]}

    def test_a_rolled_back_call_has_no_record_and_no_changes(self, app_engine: sa.Engine) -> None:
        """The record follows the transaction: rolled back, nothing of it is stored."""
        seed(app_engine, Document(id=1, title="a"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            edit(session, 1, title="b")
            session.flush()
            session.rollback()
        assert trail(app_engine) == {}
        assert obs.stats()["rolled_back"] == 1

    def test_a_rolled_back_savepoint_takes_back_what_was_flushed_inside(
        self, app_engine: sa.Engine
    ) -> None:
        """Written inside a SAVEPOINT the call rolled back: not a change; released: one."""
        seed(app_engine, Document(id=1, title="a"), Document(id=2, title="b"))

        @obs.audited("partly", changes=True)
        def partly(session: Session) -> None:
            edit.__wrapped__(session, 1, title="kept")  # type: ignore[attr-defined]
            session.flush()
            savepoint = session.begin_nested()
            edit.__wrapped__(session, 2, title="undone")  # type: ignore[attr-defined]
            session.flush()
            savepoint.rollback()
            with session.begin_nested():
                session.add(Document(id=3, title="released"))

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            partly(session)
            session.commit()
        rows = trail(app_engine)["partly"]
        assert rows is not None
        assert [(row["op"], row["pk"]) for row in rows] == [
            ("update", {"id": 1}),
            ("insert", {"id": 3}),
        ]

    def test_the_call_issues_no_query_of_its_own(self, app_engine: sa.Engine) -> None:
        """The same statements run for the call with and without changes=."""
        seed(app_engine, Document(id=1, title="a"), Document(id=2, title="b"))
        statements: list[str] = []
        sa.event.listen(app_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

        def run(fn: Any, doc_id: int) -> list[str]:
            with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
                statements.clear()
                fn(session, doc_id, title="new")
                session.flush()
                seen = list(statements)
                session.rollback()
            return seen

        plain = obs.audited("document.edited")(edit.__wrapped__)  # type: ignore[attr-defined]
        assert run(edit, 1) == run(plain, 2)
        assert len(run(edit, 1)) == 2  # the caller's SELECT and UPDATE


class TestFlushes:
    def test_autoflush_explicit_flush_and_flush_at_commit(self, app_engine: sa.Engine) -> None:
        """A query's autoflush, an explicit flush(), and a change left pending for the commit."""
        seed(app_engine, *(Document(id=i, title=f"t{i}") for i in (1, 2, 3)))

        @obs.audited("autoflushed", changes=True)
        def autoflushed(session: Session) -> None:
            edit.__wrapped__(session, 1, title="auto")  # type: ignore[attr-defined]
            session.execute(sa.select(Document)).all()  # autoflush sends the UPDATE
            assert not session.dirty

        @obs.audited("flushed", changes=True)
        def flushed(session: Session) -> None:
            edit.__wrapped__(session, 2, title="explicit")  # type: ignore[attr-defined]
            session.flush()

        @obs.audited("pending", changes=True)
        def pending(session: Session) -> None:
            edit.__wrapped__(session, 3, title="at commit")  # type: ignore[attr-defined]

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            autoflushed(session)
            flushed(session)
            pending(session)
            assert session.dirty
            session.commit()
        assert trail(app_engine) == {
            "autoflushed": [update_row(1, title=["t1", "auto"])],
            "flushed": [update_row(2, title=["t2", "explicit"])],
            "pending": [update_row(3, title=["t3", "at commit"])],
        }

    def test_a_row_changed_across_two_flushes_is_one_entry(self, app_engine: sa.Engine) -> None:
        """Inserted, flushed, then changed: one insert with the last values."""

        @obs.audited("drafted", changes=True)
        def draft(session: Session) -> None:
            doc = Document(id=5, title="first")
            session.add(doc)
            session.flush()
            doc.title = "second"

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            draft(session)
            session.commit()
        (row,) = trail(app_engine)["drafted"]  # type: ignore[misc]
        assert (row["op"], row["fields"]["title"]) == ("insert", [None, "second"])

    async def test_async_session_and_child_tasks(
        self, database_url: str, app_engine: sa.Engine
    ) -> None:
        """An AsyncSession: calls in gathered child tasks join the scope's transaction, and
        each reports its own row, flushed or pending."""
        seed(app_engine, *(Document(id=i, title=f"t{i}") for i in (1, 2)))

        @obs.audited("renamed", resource=obs.Resource("document", "{doc_id}"), changes=True)
        async def rename(session: AsyncSession, doc_id: int, title: str, flush: bool) -> None:
            doc = await session.get(Document, doc_id)
            assert doc is not None
            doc.title = title
            if flush:
                await session.flush()

        engine = create_async_engine(async_url(database_url))
        try:
            async with AsyncSession(engine) as session:
                with obs.scope(actor=ADA, session=session):
                    await asyncio.gather(rename(session, 1, "one", True))
                    await asyncio.create_task(rename(session, 2, "two", False))
                    await session.commit()
        finally:
            await engine.dispose()
        assert obs.flush(timeout=10.0)
        got = {r.resource_id: r.changes for r in obs.audit_log(app_engine)}
        assert got == {
            "1": [update_row(1, title=["t1", "one"])],
            "2": [update_row(2, title=["t2", "two"])],
        }

    def test_calls_on_a_thread_pool_follow_the_scope_session(self, app_engine: sa.Engine) -> None:
        """`obs.with_scope` runs the calls on pool threads: they follow the same session and
        join its transaction."""
        seed(app_engine, *(Document(id=i, title=f"t{i}") for i in (1, 2)))

        @obs.audited("retitled", resource=obs.Resource("document", "{doc_id}"), changes=True)
        def retitle(session: Session, doc_id: int) -> None:
            edit.__wrapped__(session, doc_id, title=f"new {doc_id}")  # type: ignore[attr-defined]

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            with ThreadPoolExecutor(1) as pool:  # one at a time: a Session is not thread-safe
                list(pool.map(obs.with_scope(lambda i: retitle(session, i)), [1, 2]))
            session.commit()
        assert obs.flush(timeout=10.0)
        got = {r.resource_id: r.changes for r in obs.audit_log(app_engine)}
        assert got == {
            "1": [update_row(1, title=["t1", "new 1"])],
            "2": [update_row(2, title=["t2", "new 2"])],
        }


class TestCoreStatements:
    def test_a_bulk_core_update_is_reported_as_such(self, app_engine: sa.Engine) -> None:
        """session.execute(update(...)) has no history: its table and row count instead."""
        seed(app_engine, *(Document(id=i, title=f"t{i}") for i in (1, 2, 3)))
        table = Document.__table__

        @obs.audited("archived", changes=True)
        def archive(session: Session) -> None:
            session.execute(sa.update(Document).where(Document.id < 3).values(status="archived"))
            session.execute(sa.delete(table).where(table.c.id == 3))

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            archive(session)
            session.commit()
        assert trail(app_engine) == {
            "archived": [
                {"table": "app_changes_documents", "op": "bulk", "statement": "update", "rows": 2},
                {"table": "app_changes_documents", "op": "bulk", "statement": "delete", "rows": 1},
            ]
        }


class TestFilterAndLimits:
    def test_changes_limited_to_named_classes(self, app_engine: sa.Engine) -> None:
        """changes=("Membership",): a Document written in the same call is left out."""

        @obs.audited("joined", changes=("Membership",))
        def join(session: Session) -> None:
            session.add(Document(id=1, title="welcome"))
            session.add(Membership(org_id="o", user_id="u", role="member"))

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            join(session)
            session.commit()
        assert [row["table"] for row in trail(app_engine)["joined"]] == [  # type: ignore[union-attr]
            "app_changes_memberships"
        ]

    def test_a_secret_column_never_reaches_the_database(
        self, database_url: str, app_engine: sa.Engine, tmp_path: Path
    ) -> None:
        """The field is named, its values are redacted, and the value's bytes are nowhere
        in the database (the app stores it hex-encoded)."""
        seed(app_engine, Document(id=1, title="a"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            edit(session, 1, password_hash=SECRET)
            session.commit()
        with capture() as cap, Session(app_engine) as session:
            with obs.scope(actor=ADA, session=session):
                edit(session, 1, password_hash=SECRET + "2")
                session.commit()
        assert trail(app_engine) == {"document.edited": [update_row(1, password_hash="[REDACTED]")]}
        assert cap.audits[0]["changes"] == [update_row(1, password_hash="[REDACTED]")]
        app_engine.dispose()
        if database_url.startswith("sqlite"):
            stored = b"".join(p.read_bytes() for p in tmp_path.glob("obs.db*"))
            assert b"must-never" not in stored
            assert SECRET.encode().hex().encode() in stored  # the app's own (encoded) row
        else:
            with app_engine.connect() as conn:
                text = conn.execute(sa.text("SELECT string_agg(t::text, '') FROM obs_audit_log t"))
                assert "must-never" not in text.scalar_one()

    def test_max_changes_bytes_cuts_and_counts_and_keeps_the_record(
        self, database_url: str, app_engine: sa.Engine
    ) -> None:
        """Long strings cut with the metadata marker, the last rows left out and counted."""
        obs.configure(app_engine, max_changes_bytes=1024)
        seed(app_engine, Document(id=1, title="a"))

        @obs.audited("imported", changes=True)
        def import_all(session: Session) -> None:
            edit.__wrapped__(session, 1, body="x" * 5000)  # type: ignore[attr-defined]
            session.flush()
            session.add_all(Membership(org_id="o", user_id=f"u_{i}", role="m") for i in range(50))

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            import_all(session)
            session.commit()
        rows = trail(app_engine)["imported"]
        assert rows is not None
        assert len(json.dumps(rows, separators=(",", ":")).encode()) <= 1024
        first, *kept, marker = rows
        assert first["fields"]["body"][1].startswith("xxx")
        assert "…[truncated " in first["fields"]["body"][1]
        assert first["_truncated"] is True
        assert marker == {"_truncated": True, "omitted": 50 - len(kept)}
        assert 0 < len(kept) < 50

    def test_a_call_writing_thousands_of_rows_is_bounded_and_counted(
        self, app_engine: sa.Engine
    ) -> None:
        """1,500 inserts: the record is kept, its JSON within the limit, every row not shown
        counted (the first thousand are diffed, the rest only counted)."""

        @obs.audited("imported", changes=True)
        def import_all(session: Session) -> None:
            session.add_all(
                Membership(org_id="o", user_id=f"u_{i:04}", role="m") for i in range(1500)
            )

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            import_all(session)
            session.commit()
        rows = trail(app_engine)["imported"]
        assert rows is not None
        *shown, marker = rows
        assert len(json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()) <= 65536
        assert marker == {"_truncated": True, "omitted": 1500 - len(shown)}
        assert 100 < len(shown) < 1000
        assert {row["op"] for row in shown} == {"insert"}


class TestEdges:
    def test_record_audit_takes_what_is_pending(self, app_engine: sa.Engine) -> None:
        """record_audit(changes=True) reads the session's unflushed changes at that moment."""
        seed(app_engine, Document(id=1, title="a"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            doc = session.get(Document, 1)
            assert doc is not None
            doc.status = "published"
            obs.record_audit("document.published", changes=("Document",))
            session.commit()
        assert trail(app_engine) == {
            "document.published": [update_row(1, status=["draft", "published"])]
        }

    def test_without_a_session_changes_are_null_and_it_warns_once(
        self, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No scope session: nothing to read from; the record is kept with changes None."""

        @obs.audited("noted", changes=True)
        def note() -> None:
            pass

        with obs.scope(actor=ADA):
            note()
            note()
        assert trail(app_engine) == {"noted": None}
        assert sum("no session in scope" in r.getMessage() for r in caplog.records) == 1

    def test_calls_without_changes_keep_their_fast_wrapper(self) -> None:
        """changes=False generates the usual lane; only changes= gets the following wrapper."""

        def body(x: int) -> int:
            return x

        plain = obs.audited("a.b")(body)
        following = obs.audited("a.b", changes=True)(body)
        assert "_o_queue" in plain.__globals__ and "_o_begin" not in plain.__globals__
        assert "_o_begin" in following.__globals__

    def test_a_caller_exception_passes_unchanged_and_following_stops(
        self, app_engine: sa.Engine
    ) -> None:
        """The call raises: the same exception; its session is no longer followed."""
        seed(app_engine, Document(id=1, title="a"))

        @obs.audited("failed", changes=True, when="always")
        def fail(session: Session) -> None:
            edit.__wrapped__(session, 1, title="x")  # type: ignore[attr-defined]
            raise KeyError("boom")

        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            with pytest.raises(KeyError, match="boom"):
                fail(session)
            assert "obs_sdk.changes" not in session.info
            session.rollback()
        assert obs.flush(timeout=10.0)
        (record,) = obs.audit_log(app_engine)
        assert (record.outcome, record.changes) == ("failure", None)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"changes": "Document"}, "tuple of mapped class names"),
            ({"changes": ()}, "names no class"),
            ({"changes": (1,)}, "by name"),
            ({"changes": True, "when": "start"}, "when='success' or 'always'"),
        ],
    )
    def test_mistakes_fail_at_decoration(self, kwargs: dict[str, Any], message: str) -> None:
        """A wrong changes= says what it takes."""
        with pytest.raises(obs.ConfigurationError, match=message):
            obs.audited("a.b", **kwargs)

    def test_generators_are_refused(self) -> None:
        """A generator's changes would be read at exhaustion: refused, with what to do."""
        with pytest.raises(obs.ConfigurationError, match="not generators"):

            @obs.audited("a.b", changes=True)
            def rows() -> Iterator[int]:
                yield 1

    def test_otel_log_export_includes_the_changes(self, app_engine: sa.Engine) -> None:
        """The mirrored log record carries them as one JSON attribute, obs.changes."""
        provider = LoggerProvider(shutdown_on_exit=False)
        exporter = InMemoryLogRecordExporter()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        obs.configure(app_engine, otel_logs=provider)
        seed(app_engine, Document(id=1, title="a"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            edit(session, 1, title="b")
            session.commit()
        assert obs.flush(timeout=10.0)
        (log,) = exporter.get_finished_logs()
        attributes = log.log_record.attributes or {}
        assert json.loads(str(attributes["obs.changes"])) == [update_row(1, title=["a", "b"])]
        provider.shutdown()


# obs_audit_log's indexes at schema version 1, by key: (columns..., id).
VERSION_1_INDEXES = {
    "org": "organization_id",
    "ws": "workspace_id",
    "actor": "actor_id",
    "resource": "resource_type, resource_id",
}


class TestSchemaVersion2:
    """A version-1 database (no changes column) is migrated by configure() and create_tables()."""

    def make_version_1(self, engine: sa.Engine) -> None:
        """Today's tables taken back to version 1, holding one record of that time."""
        old_id: Any = uuid.UUID(int=1)
        if engine.dialect.name == "sqlite":
            old_id = old_id.hex  # how SQLAlchemy's Uuid stores it there
        obs.create_tables(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE obs_audit_log DROP COLUMN changes"))
            conn.execute(sa.text("UPDATE obs_schema_version SET version = 1"))
            # Version 1's indexes: (key, id), no time index.
            conn.execute(sa.text("DROP INDEX obs_audit_time_idx"))
            for key, columns in VERSION_1_INDEXES.items():
                conn.execute(sa.text(f"DROP INDEX obs_audit_{key}_time_idx"))
                conn.execute(
                    sa.text(f"CREATE INDEX obs_audit_{key}_idx ON obs_audit_log ({columns}, id)")
                )
            conn.execute(
                sa.text(
                    "INSERT INTO obs_audit_log (id, occurred_at, action, outcome, actor_type, "
                    "metadata) VALUES (:id, :at, 'old.action', 'success', 'system', '{}')"
                ),
                {
                    "id": uuid.UUID(int=1).hex
                    if engine.dialect.name == "sqlite"
                    else uuid.UUID(int=1),
                    "at": datetime.datetime(2026, 1, 1),
                },
            )

    def versions(self, engine: sa.Engine) -> list[int]:
        with engine.connect() as conn:
            return [
                int(v)
                for v in conn.execute(sa.text("SELECT version FROM obs_schema_version")).scalars()
            ]

    @pytest.mark.parametrize("how", ["configure", "create_tables"])
    def test_a_version_1_database_is_migrated(
        self, database_url: str, app_engine: sa.Engine, how: str
    ) -> None:
        """The column is added, the version moved to the current one, old rows read None."""
        obs.shutdown()
        with app_engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_audit_log"))
            conn.execute(sa.text("DROP TABLE obs_schema_version"))
        self.make_version_1(app_engine)
        if how == "create_tables":
            obs.create_tables(app_engine)
            obs.configure(app_engine, create_tables=False)
        else:
            obs.configure(app_engine)
        assert self.versions(app_engine) == [3]
        indexes = {i["name"] for i in sa.inspect(app_engine).get_indexes("obs_audit_log")}
        assert {f"obs_audit_{key}_time_idx" for key in VERSION_1_INDEXES} <= indexes
        assert "obs_audit_time_idx" in indexes
        assert not {f"obs_audit_{key}_idx" for key in VERSION_1_INDEXES} & indexes  # replaced
        seed(app_engine, Document(id=1, title="a"))
        with Session(app_engine) as session, obs.scope(actor=ADA, session=session):
            edit(session, 1, title="b")
            session.commit()
        assert trail(app_engine) == {
            "old.action": None,
            "document.edited": [update_row(1, title=["a", "b"])],
        }

    def test_configure_without_creating_names_the_migration(self, app_engine: sa.Engine) -> None:
        """configure(create_tables=False) on version 1 fails with what to run."""
        obs.shutdown()
        with app_engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE obs_audit_log"))
            conn.execute(sa.text("DROP TABLE obs_schema_version"))
        self.make_version_1(app_engine)
        with pytest.raises(obs.ConfigurationError, match=r"schema version 1.*create_tables"):
            obs.configure(app_engine, create_tables=False)
