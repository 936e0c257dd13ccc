"""Real processes: delivery at interpreter exit, fork, SIGKILL after commit, and startup races.

Each test runs a small script in a fresh interpreter (``sys.executable``) against a SQLite
file or the real PostgreSQL, then reads the trail from the test process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import obs_sdk as obs

pytestmark = pytest.mark.acceptance

TIMEOUT = 120  # seconds; a hung child fails the test instead of hanging the suite


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    """An engine of the test's own (NullPool: it holds no connection between reads)."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def run_script(
    source: str, *, url: str = "", cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run *source* in a fresh interpreter with OBS_URL set; return the finished process."""
    env = {**os.environ, "OBS_URL": url}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def counts_by_action(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT action, count(*), count(DISTINCT id) FROM obs_audit_log GROUP BY action"
            )
        ).all()
    assert all(total == distinct for _, total, distinct in rows)
    return {action: total for action, total, _ in rows}


class TestExit:
    """Nothing is lost at a clean exit, without flush() or shutdown()."""

    def test_thousands_of_calls_without_flush_or_shutdown(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """5000 audited calls, then the interpreter simply ends: every row is in the database."""
        run_script(
            """
            import os
            import obs_sdk as obs

            @obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
            def download(file_id):
                return file_id

            obs.configure(os.environ["OBS_URL"])
            for i in range(5000):
                download(f"f_{i}")
            """,
            url=database_url,
        )
        assert counts_by_action(reader) == {"file.downloaded": 5000}

    def test_never_configured_warns_once_and_writes_nothing(self, tmp_path: Path) -> None:
        """Without configure(): no file appears in the cwd, and one warning says why at exit."""
        proc = run_script(
            """
            import obs_sdk as obs

            @obs.audited("file.downloaded")
            def download():
                return 1

            for _ in range(10):
                download()
            obs.record_audit("manual")
            assert obs.flush(timeout=0.1) is False
            """,
            cwd=tmp_path,
        )
        assert sorted(os.listdir(tmp_path)) == []
        warning = "11 records were never delivered because obs.configure() was never called"
        assert proc.stderr.count(warning) == 1, proc.stderr
        assert proc.stderr.count("obs_sdk") == 1, proc.stderr

    def test_configured_clean_exit_is_silent(self, tmp_path: Path) -> None:
        """A configured process that delivered everything exits without a warning."""
        proc = run_script(
            """
            import obs_sdk as obs
            obs.configure("sqlite:///obs.db")
            obs.record_audit("a.b")
            """,
            cwd=tmp_path,
        )
        assert proc.stderr == ""
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'obs.db'}", poolclass=sa.NullPool)
        try:
            assert counts_by_action(engine) == {"a.b": 1}
        finally:
            engine.dispose()


class TestFork:
    """A forked child delivers its own records; the parent's queue is not copied."""

    def test_child_records_arrive_and_parent_records_are_not_duplicated(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """2000 parent records queued at fork time, 300 child records: each once."""
        run_script(
            """
            import os, sys
            import obs_sdk as obs

            obs.configure(os.environ["OBS_URL"])
            obs.record_audit("warmup")
            assert obs.flush()  # the worker thread and the pool exist before the fork
            for i in range(2000):
                obs.record_audit("parent.before_fork", metadata={"i": i})
            pid = os.fork()
            if pid == 0:
                for i in range(300):
                    obs.record_audit("child", metadata={"i": i})
                sys.exit(0)  # a normal exit: the child's atexit hook delivers
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            for i in range(100):
                obs.record_audit("parent.after_fork")
            """,
            url=database_url,
        )
        assert counts_by_action(reader) == {
            "warmup": 1,
            "parent.before_fork": 2000,
            "child": 300,
            "parent.after_fork": 100,
        }

    def test_forks_while_the_worker_is_busy_never_hang_a_child(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """20 forks while the worker renders records nonstop: every child delivers and exits.

        A lock held by the worker at fork time (ids, error counter, queue) would stay held in
        the child forever; each child must still write its records and exit within bounds.
        """
        run_script(
            """
            import os, sys, threading
            import obs_sdk as obs

            obs.configure(os.environ["OBS_URL"])
            stop = threading.Event()

            def busy():
                while not stop.is_set():
                    obs.record_audit("parent.busy")

            threading.Thread(target=busy, daemon=True).start()
            for n in range(20):
                pid = os.fork()
                if pid == 0:
                    for i in range(5):
                        obs.record_audit("child", metadata={"n": n, "i": i})
                    os._exit(0 if obs.shutdown(timeout=20.0) else 3)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
            stop.set()
            """,
            url=database_url,
        )
        assert counts_by_action(reader)["child"] == 100


class TestCrashAfterCommit:
    """A transactional record survives SIGKILL right after the commit."""

    def test_sigkill_right_after_commit(self, database_url: str, reader: sa.Engine) -> None:
        """The child commits, is killed before any flush or exit hook: the row is there."""
        proc = run_script(
            """
            import os, signal
            import sqlalchemy as sa
            from sqlalchemy.orm import Session
            import obs_sdk as obs

            obs.configure(os.environ["OBS_URL"])
            app = sa.create_engine(os.environ["OBS_URL"])

            @obs.audited("invoice.paid", resource=obs.Resource("invoice", "{invoice_id}"))
            def pay(invoice_id):
                return "paid"

            with Session(app) as session, obs.scope(
                actor=obs.Actor.user("u_1"), session=session
            ):
                pay("inv_1")
                session.commit()
            os.kill(os.getpid(), signal.SIGKILL)
            """,
            url=database_url,
            check=False,
        )
        assert proc.returncode == -signal.SIGKILL
        records = obs.audit_log(reader)
        assert [(r.action, r.resource_id, r.actor_id) for r in records] == [
            ("invoice.paid", "inv_1", "u_1")
        ]


class TestConcurrentStartup:
    """configure() creating the tables is safe when several processes start at once."""

    def test_four_processes_configure_a_fresh_database(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Four processes released together all configure and write without an error.

        Each creates only what it finds missing: every table and index exists afterwards,
        with one version row.
        """
        script = textwrap.dedent(
            """
            import os, sys
            import obs_sdk as obs
            import sqlalchemy  # everything imported before the start line
            print("ready", flush=True)
            sys.stdin.readline()
            obs.configure(os.environ["OBS_URL"])
            obs.record_audit("started", metadata={"pid": os.getpid()})
            assert obs.shutdown()
            print("ok", flush=True)
            """
        )
        env = {**os.environ, "OBS_URL": database_url}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            for p in procs:  # a barrier: every process is ready before any starts
                assert p.stdout is not None
                assert p.stdout.readline() == "ready\n"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [p.communicate(timeout=TIMEOUT) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [(p.returncode, out) for p, (out, _) in zip(procs, results, strict=True)] == [
            (0, "ok\n")
        ] * 4, [err for _, err in results]
        assert counts_by_action(reader) == {"started": 4}
        with reader.connect() as conn:
            versions = conn.execute(sa.text("SELECT version FROM obs_schema_version")).all()
        assert versions == [(3,)]
        expected = {t.name: {i.name for i in t.indexes} for t in obs.metadata().sorted_tables}
        inspector = sa.inspect(reader)
        assert {
            name: {index["name"] for index in inspector.get_indexes(name)} for name in expected
        } == expected
