"""Celery's prefork pool: a real ``celery worker`` process whose tasks run in child processes.

The app module below is written as a user writes one (``obs.configure`` and ``instrument``
at import), and the worker is Celery's own command line, with the prefork pool and
``--max-tasks-per-child=1``: every task runs in a fresh child process forked from the
worker, which exits right after. The broker and result backend are Celery's filesystem
ones, so that this process can publish to the worker process.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

import obs_sdk as obs

ROOT = Path(__file__).resolve().parents[3]
TASKS = 6

APP_MODULE = """
import os

import sqlalchemy as sa
from celery import Celery

import obs_sdk as obs
from obs_sdk.integrations.celery import instrument

HERE = os.path.dirname(os.path.abspath(__file__))
engine = sa.create_engine(os.environ["OBS_TEST_DATABASE_URL"])
obs.configure(database=engine)

app = Celery("prefork_app", broker="filesystem://", backend="file://" + HERE + "/results")
app.conf.update(
    broker_transport_options={
        "data_folder_in": HERE + "/broker",
        "data_folder_out": HERE + "/broker",
        "control_folder": HERE + "/control",  # default: ./control, wherever the test runs
        "polling_interval": 0.05,
    },
    broker_connection_retry_on_startup=True,
)
instrument(app, secret="prefork-secret")


@obs.audited("report.exported", resource=obs.Resource("report", "{report_id}"))
def export_report(report_id):
    return os.getpid()


@app.task(name="reports.export")
def export(report_id):
    return export_report(report_id)
"""


@pytest.fixture
def app_module(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The app module, imported here (the publisher) from a file the worker imports too."""
    (tmp_path / "broker").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "prefork_app.py").write_text(APP_MODULE)
    monkeypatch.setenv("OBS_TEST_DATABASE_URL", database_url)
    spec = importlib.util.spec_from_file_location("prefork_app", tmp_path / "prefork_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    obs.shutdown()
    module.engine.dispose()


@pytest.fixture
def worker_process(app_module: ModuleType, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`celery worker --pool=prefork` on the app module; stopped (warm shutdown) by the test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "prefork_app", "worker"),
            *("--pool=prefork", "--concurrency=2", "--max-tasks-per-child=1"),
            *("--without-heartbeat", "--without-mingle", "--without-gossip"),
            *("--loglevel=WARNING",),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def stop(process: subprocess.Popen[str]) -> str:
    """Warm shutdown (SIGTERM): the worker waits for its children; return its output."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    return output


def test_tasks_in_prefork_children_record_the_publishers_scope(
    app_module: ModuleType, worker_process: subprocess.Popen[str], database_url: str
) -> None:
    """Each task runs in its own child process (max-tasks-per-child=1) and records the
    publisher's actor and organization; every record reaches the database although each
    child exits right after its task (SQLite file and PostgreSQL, across processes)."""
    results: list[Any] = []
    for n in range(TASKS):
        with obs.scope(actor=obs.Actor.user(f"u_{n}"), organization="org_acme"):
            results.append(app_module.export.delay(f"r_{n}"))
    pids = {r.get(timeout=60, interval=0.05) for r in results}
    output = stop(worker_process)
    assert worker_process.returncode == 0, output
    assert "obs_sdk" not in output  # no warning or internal error in the worker or its children
    assert len(pids) == TASKS  # one child process per task
    assert os.getpid() not in pids
    engine = sa.create_engine(database_url)
    try:
        found = sorted(
            (r.actor_id, r.organization_id, r.resource_id)
            for r in obs.audit_log(engine, limit=1000)
        )
    finally:
        engine.dispose()
    assert found == [(f"u_{n}", "org_acme", f"r_{n}") for n in range(TASKS)]
