"""The scope and the transaction in the shapes real applications have.

Each test is a shape that broke on the base of this work (child tasks that set their own
actor, a scope object shared between threads, pooled threads, FastAPI dependencies, thread
pools inside a transaction, a read-only request that closes its session): it runs the shape
as an application would, on a SQLite file and on the real PostgreSQL server, and reads the
trail back with a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import obs_sdk as obs
from tests.support.databases import async_url, configured_app_engine

pytestmark = pytest.mark.acceptance


class Base(DeclarativeBase):
    """The application's own models (their own registry: nothing else is unmapped)."""


class File(Base):
    __tablename__ = "app_scenario_files"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))


@pytest.fixture
def app_engine(database_url: str) -> Iterator[sa.Engine]:
    """The application's engine, with its table and obs_sdk configured on the same database."""
    yield from configured_app_engine(database_url, Base.metadata)


def trail(engine: sa.Engine) -> list[tuple[str, str | None, str | None]]:
    """(action, resource id, actor id) of every committed record, after a flush."""
    assert obs.flush(timeout=10.0)
    records = obs.audit_log(engine, limit=10_000, order="asc")
    return [(r.action, r.resource_id, r.actor_id) for r in records]


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str) -> str:
    return f"bytes of {file_id}"


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
async def adownload(file_id: str) -> str:
    await asyncio.sleep(0)  # let the siblings interleave
    return f"bytes of {file_id}"


def user(i: int | str) -> obs.Actor:
    return obs.Actor.user(f"u_{i}")


class TestActorInChildren:
    async def test_gathered_children_set_their_own_actor(self, app_engine: sa.Engine) -> None:
        """A fan-out where each child sets its user: siblings never overwrite one another,
        and the parent keeps its own actor."""

        async def child(i: int) -> None:
            obs.set_actor(user(i))
            await asyncio.sleep(0)
            await adownload(f"f_{i}")

        with obs.scope(actor=obs.Actor.service("svc_batch")):
            await asyncio.gather(*(child(i) for i in range(20)))
            await adownload("f_parent")
            assert obs.current_scope().actor == obs.Actor.service("svc_batch")

        got = {resource: actor for _, resource, actor in trail(app_engine)}
        assert got == {**{f"f_{i}": f"u_{i}" for i in range(20)}, "f_parent": "svc_batch"}

    def test_one_scope_object_entered_by_many_threads_at_once(
        self, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A module-level scope object (a cron job's system scope) used by 8 threads at once:
        each thread's exit restores its own context, and no actor leaks between them."""
        job_scope = obs.scope(actor=obs.Actor.system("cron"), workspace="ws_jobs")
        barrier = threading.Barrier(8)
        after: list[obs.Scope] = []

        def job(i: int) -> None:
            with job_scope:
                barrier.wait()
                obs.set_actor(user(i))
                barrier.wait()
                download(f"f_{i}")
                barrier.wait()
            after.append(obs.current_scope())

        with caplog.at_level(logging.ERROR):
            threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert after == [obs.Scope()] * 8  # every thread's context restored exactly
        assert not [r for r in caplog.records if "detach" in r.getMessage()]
        got = {resource: actor for _, resource, actor in trail(app_engine)}
        assert got == {f"f_{i}": f"u_{i}" for i in range(8)}

    def test_one_suppressed_object_shared_by_threads(self, app_engine: sa.Engine) -> None:
        """A module-level `obs.suppressed()` (a health check's) used by 4 threads at once:
        each thread leaves it unsuppressed, and records what it does afterwards."""
        quiet = obs.suppressed()
        barrier = threading.Barrier(4)

        def job(i: int) -> None:
            with obs.scope(actor=user(i)):
                with quiet:
                    barrier.wait()
                    download(f"f_quiet_{i}")
                    barrier.wait()
                download(f"f_{i}")

        threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = {resource: actor for _, resource, actor in trail(app_engine)}
        assert got == {f"f_{i}": f"u_{i}" for i in range(4)}

    def test_set_actor_outside_a_scope_never_reaches_the_next_job_of_a_pooled_thread(
        self, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A job that sets an actor without a scope must not leave it on the worker thread
        for the next, unrelated job."""

        def authenticated_job() -> None:
            obs.set_actor(user("first_job"))
            download("f_first")

        def unrelated_job() -> None:
            download("f_second")

        with caplog.at_level(logging.WARNING, logger="obs_sdk"), ThreadPoolExecutor(1) as pool:
            pool.submit(authenticated_job).result()
            pool.submit(unrelated_job).result()
        assert trail(app_engine) == [
            ("file.downloaded", "f_first", None),
            ("file.downloaded", "f_second", None),
        ]
        assert obs.stats()["set_actor_outside_scope"] == 1
        assert any("outside any scope" in r.getMessage() for r in caplog.records)

    def test_only_the_four_actor_kinds_exist(self) -> None:
        """`Actor("admin-api")` was accepted and filed as an unknown actor type."""
        with pytest.raises(obs.ConfigurationError, match=r"Actor\.user\(id\).*Actor\.service"):
            obs.Actor("admin-api")
        with pytest.raises(obs.ConfigurationError):
            obs.Actor("user")  # a user without an id


class TestChildrenJoinTheTransaction:
    @pytest.mark.parametrize("end", ["rollback", "commit"])
    async def test_gathered_children_follow_the_async_session(
        self, database_url: str, app_engine: sa.Engine, end: str
    ) -> None:
        """`asyncio.gather` inside `obs.scope(session=...)`: the children's records are held
        with the parent's and share its fate."""
        engine = create_async_engine(async_url(database_url))
        try:
            async with AsyncSession(engine) as session:
                with obs.scope(actor=user(1), session=session):
                    session.add(File(id="f_new", name="report.pdf"))
                    await session.flush()
                    await asyncio.gather(*(adownload(f"f_{i}") for i in range(5)))
                    await getattr(session, end)()
        finally:
            await engine.dispose()
        expected = {f"f_{i}" for i in range(5)} if end == "commit" else set()
        assert {resource for _, resource, _ in trail(app_engine)} == expected
        assert obs.stats()["rolled_back"] == (5 if end == "rollback" else 0)

    @pytest.mark.parametrize("end", ["rollback", "commit"])
    def test_thread_pool_work_follows_the_session(self, app_engine: sa.Engine, end: str) -> None:
        """`obs.with_scope` functions run on a thread pool inside the transaction."""
        with Session(app_engine) as session, obs.scope(actor=user(1), session=session):
            session.add(File(id="f_new", name="report.pdf"))
            session.flush()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(obs.with_scope(download), [f"f_{i}" for i in range(8)]))
            getattr(session, end)()
        expected = {f"f_{i}" for i in range(8)} if end == "commit" else set()
        assert {resource for _, resource, _ in trail(app_engine)} == expected

    def test_a_child_that_outlives_its_scope_is_written_and_counted(
        self, app_engine: sa.Engine
    ) -> None:
        """A thread still running when the request's transaction ended: its record is
        written on its own, and counted late."""
        started, release = threading.Event(), threading.Event()

        def slow() -> None:
            started.set()
            release.wait(10)
            download("f_late")

        with Session(app_engine) as session:
            with obs.scope(actor=user(1), session=session):
                session.add(File(id="f_new", name="report.pdf"))
                worker = threading.Thread(target=obs.with_scope(slow))
                worker.start()
                started.wait(10)
                session.commit()
        release.set()
        worker.join()
        assert trail(app_engine) == [("file.downloaded", "f_late", "u_1")]
        assert obs.stats()["late"] == 1

    def test_a_held_record_never_begins_the_session(self, app_engine: sa.Engine) -> None:
        """The caller's `with session.begin():` after an audited call raised "A transaction
        is already begun": obs_sdk began the session to hold the record."""
        with Session(app_engine) as session, obs.scope(actor=user(1), session=session):
            download("f_1")
            assert not session.in_transaction()
            with session.begin():
                session.add(File(id="f_1", name="a.txt"))
        assert trail(app_engine) == [("file.downloaded", "f_1", "u_1")]


class TestHowTheTransactionEnds:
    def test_a_read_only_request_closed_without_commit_keeps_its_records(
        self, app_engine: sa.Engine
    ) -> None:
        """A download in a GET: the session read a row and was closed without commit."""
        with Session(app_engine) as session:
            session.add(File(id="f_1", name="a.txt"))
            session.commit()
        with Session(app_engine) as session, obs.scope(actor=user(1), session=session):
            assert session.get(File, "f_1") is not None
            download("f_1")
        assert trail(app_engine) == [("file.downloaded", "f_1", "u_1")]
        assert obs.stats()["rolled_back"] == 0

    def test_a_transaction_that_wrote_and_closed_without_commit_drops_them(
        self, app_engine: sa.Engine
    ) -> None:
        """Closed without commit after a write: the write is gone, so is its record."""
        with Session(app_engine) as session, obs.scope(actor=user(1), session=session):
            session.add(File(id="f_1", name="a.txt"))
            session.flush()
            download("f_1")
        assert trail(app_engine) == []
        assert obs.stats()["rolled_back"] == 1

    def test_an_explicit_rollback_drops_them_even_after_a_read(self, app_engine: sa.Engine) -> None:
        """rollback() says the unit of work failed: its records go, counted."""
        with Session(app_engine) as session, obs.scope(actor=user(1), session=session):
            session.execute(sa.select(File)).all()
            download("f_1")
            session.rollback()
        assert trail(app_engine) == []
        assert obs.stats()["rolled_back"] == 1


class TestIdsAtCommit:
    @pytest.mark.swallows_internal_errors
    def test_a_taken_id_at_commit_is_replaced_not_skipped(
        self, database_url: str, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Records inserted at the caller's commit whose ids are taken (a process that reuses
        ids) were skipped silently by ON CONFLICT DO NOTHING: they are written under new ids."""
        from obs_sdk.testing import IncrementingIds

        obs.configure(app_engine, id_factory=IncrementingIds())
        for i in range(2):
            download(f"f_before_{i}")
        assert obs.flush()
        obs.configure(app_engine, id_factory=IncrementingIds())  # ids 1, 2 again
        with Session(app_engine) as session, obs.scope(actor=user(1), session=session):
            session.add(File(id="f_1", name="a.txt"))
            for i in range(3):
                download(f"f_tx_{i}")
            session.commit()
        got = trail(app_engine)
        assert sorted(resource for _, resource, _ in got) == [
            "f_before_0",
            "f_before_1",
            "f_tx_0",
            "f_tx_1",
            "f_tx_2",
        ]
        assert obs.stats()["internal_errors"] == 2
        assert "ids collided" in caplog.text


def fastapi_app(engine: sa.Engine, async_engine: Any) -> FastAPI:
    """An app in FastAPI's usual shapes: sync and async generator dependencies that open
    the session and the scope, `def` and `async def` routes, authentication dependencies."""
    app = FastAPI()
    sessions = sessionmaker(engine)
    async_sessions = async_sessionmaker(async_engine)

    def sync_db() -> Iterator[Session]:
        with sessions() as session, obs.scope(session=session):
            yield session
            session.commit()

    async def async_db() -> AsyncIterator[AsyncSession]:
        async with async_sessions() as session:
            with obs.scope(session=session):
                yield session
                await session.commit()

    async def async_auth() -> None:
        obs.set_actor(user("async_dep"))

    def sync_auth() -> None:
        obs.set_actor(user("sync_dep"))

    @app.get("/async/{file_id}", dependencies=[Depends(async_auth)])
    async def async_route(
        file_id: str,
        session: AsyncSession = Depends(async_db),  # noqa: B008
    ) -> dict:
        if await session.get(File, file_id) is None:
            raise HTTPException(404)
        await adownload(file_id)
        return {"ok": True}

    @app.post("/async/{file_id}/fail", dependencies=[Depends(async_auth)])
    async def async_fails(
        file_id: str,
        session: AsyncSession = Depends(async_db),  # noqa: B008
    ) -> dict:
        session.add(File(id=f"{file_id}_copy", name="copy"))
        await session.flush()
        await adownload(file_id)
        raise HTTPException(409)

    @app.get("/sync/{file_id}", dependencies=[Depends(sync_auth)])
    def sync_route(file_id: str, session: Session = Depends(sync_db)) -> dict:  # noqa: B008
        download(file_id)
        return {"ok": True}

    return app


class TestFastAPI:
    @pytest.fixture
    def client(self, database_url: str, app_engine: sa.Engine) -> Iterator[httpx.AsyncClient]:
        async_engine = create_async_engine(async_url(database_url))
        with Session(app_engine) as session:
            session.add(File(id="f_1", name="a.txt"))
            session.commit()
        with obs.scope(actor=obs.Actor.anonymous()):  # what a middleware opens
            transport = httpx.ASGITransport(app=fastapi_app(app_engine, async_engine))
            yield httpx.AsyncClient(transport=transport, base_url="http://test")
        asyncio.run(async_engine.dispose())

    async def test_async_dependencies_and_routes_are_transactional(
        self, client: httpx.AsyncClient, app_engine: sa.Engine
    ) -> None:
        """The actor an async auth dependency sets reaches the route; the route's records
        commit with the request and go with its rollback."""
        assert (await client.get("/async/f_1")).status_code == 200
        assert (await client.post("/async/f_1/fail")).status_code == 409
        assert trail(app_engine) == [("file.downloaded", "f_1", "u_async_dep")]

    async def test_sync_generator_dependency_warns_instead_of_failing_silently(
        self, client: httpx.AsyncClient, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A `def` dependency with `yield` runs its enter and exit on worker threads, each in
        a copy of the request's context: the scope never reaches the route. That used to log
        OpenTelemetry's "Failed to detach context" traceback on every request and nothing
        else; it must say, once, what to do instead."""
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert (await client.get("/sync/f_1")).status_code == 200
        assert not [r for r in caplog.records if "Failed to detach" in r.getMessage()]
        warned = [r for r in caplog.records if "another context" in r.getMessage()]
        assert len(warned) == 1
        assert "async def" in warned[0].getMessage()
        setters = [r for r in caplog.records if "another thread" in r.getMessage()]
        assert len(setters) == 1  # the `def` auth dependency's set_actor reaches nothing


def test_set_actor_in_a_copied_context_stays_there() -> None:
    """The context a framework copies for a worker thread: the actor set there applies to
    that thread's work only, never to the request's context it was copied from."""
    with obs.scope(actor=obs.Actor.anonymous()):
        contextvars.copy_context().run(obs.set_actor, user("worker"))
        assert obs.current_scope().actor == obs.Actor.anonymous()
