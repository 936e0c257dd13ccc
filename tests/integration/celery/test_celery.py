"""obs_sdk.integrations.celery: the publisher's scope, signed in the task headers, on a real worker.

Every test runs Celery's own test worker (``celery.contrib.testing.worker.start_worker``) on
the in-memory broker and result backend, in a thread of this process: the task is
serialized, routed through a queue and run by the worker's consumer, never eagerly. Each
app gets its own queue, so no test can consume another's messages. "Another service" that
publishes to the same broker is a second, uninstrumented Celery app: that is how forged and
tampered headers reach the worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery, chain, group, signals
from celery.contrib.testing.worker import start_worker

import obs_sdk as obs
from obs_sdk.exceptions import ConfigurationError
from obs_sdk.integrations.celery import SCOPE_REJECTED_ACTION, instrument

SECRET = "celery-scope-secret-for-tests"
ADA = obs.Actor.user("u_ada")
RESULT_TIMEOUT = 20.0


class ReportBroken(Exception):
    """The task's own failure, raised through @audited."""


# --- the service: decorated functions the tasks call --------------------------------------


@obs.audited("report.exported", resource=obs.Resource("report", "{report_id}"))
def export_report(report_id: str) -> str:
    return threading.current_thread().name


@obs.audited("report.exported", resource=obs.Resource("report", "{report_id}"), when="always")
def export_broken_report(report_id: str) -> None:
    raise ReportBroken(report_id)


@dataclass
class Tasks:
    """One app's tasks (Celery binds a task to the app that declares it)."""

    app: Celery
    export: Any
    export_broken: Any
    audited_task: Any
    publish_child: Any
    retry_once: Any
    attempts: dict[str, int]


def build_app(*, instrumented: bool = True, queue: str | None = None, **options: Any) -> Tasks:
    """A Celery app on the in-memory broker, with its own queue and the service's tasks."""
    app = Celery(f"obs-test-{uuid.uuid4().hex[:8]}", broker="memory://", backend="cache+memory://")
    app.conf.update(
        task_default_queue=queue or f"q-{uuid.uuid4().hex}",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"polling_interval": 0.01},
    )
    if instrumented:
        instrument(app, secret=SECRET, **options)
    attempts: dict[str, int] = {}

    @app.task(name="reports.export", shared=False)
    def export(report_id: str) -> str:
        return export_report(report_id)

    @app.task(name="reports.export_broken", shared=False)
    def export_broken(report_id: str) -> None:
        export_broken_report(report_id)

    # The task itself audited: @audited under @app.task, so the worker runs the wrapper.
    @app.task(name="reports.audited_task", shared=False)
    @obs.audited("report.purged", resource=obs.Resource("report", "{report_id}"), when="always")
    def audited_task(report_id: str, fail: bool = False) -> None:
        if fail:
            raise ReportBroken(report_id)

    @app.task(name="reports.publish_child", shared=False)
    def publish_child(report_id: str) -> str:
        return export.delay(report_id).id  # type: ignore[no-any-return]

    @app.task(name="reports.retry_once", shared=False, bind=True, max_retries=1)
    def retry_once(self: Any, report_id: str) -> str:
        attempts[report_id] = attempts.get(report_id, 0) + 1
        if attempts[report_id] == 1:
            raise self.retry(countdown=0)
        return export_report(report_id)

    return Tasks(app, export, export_broken, audited_task, publish_child, retry_once, attempts)


@contextmanager
def worker(tasks: Tasks, **options: Any) -> Iterator[None]:
    """Celery's test worker for the app, in a thread (the solo pool unless told).

    Starting one takes a tenth of a second, stopping it about four (its consumer loop
    wakes every two seconds): tests share a class's worker unless they need their own.
    """
    with start_worker(tasks.app, perform_ping_check=False, shutdown_timeout=30.0, **options):
        yield


def keep_pytest_logging(**_: Any) -> None:
    """A setup_logging receiver: Celery then leaves the logging configuration alone."""


@pytest.fixture(scope="module", autouse=True)
def celery_leaves_logging_alone() -> Iterator[None]:
    """Without a setup_logging receiver, start_worker sets the root logger to ERROR and adds
    handlers to it, for the rest of the session."""
    signals.setup_logging.connect(keep_pytest_logging, weak=False)
    yield
    signals.setup_logging.disconnect(keep_pytest_logging)


@pytest.fixture(scope="class")
def shared() -> Iterator[Tasks]:
    """One instrumented app and its running worker for a class's tests.

    Two test workers must never run at once: stopping one sets Celery's process-wide
    ``should_terminate``, which stops the other too. Tests that need a worker of their own
    are in TestWorkerOptions, which does not use this fixture.
    """
    tasks = build_app()
    with worker(tasks):
        yield tasks


@pytest.fixture(autouse=True)
def clean_logs(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[None]:
    """No context detach errors anywhere; obs_sdk warns only in the tests of rejections."""
    caplog.set_level(logging.INFO)
    yield
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "Failed to detach" in m] == []
    assert [m for m in messages if "exited in another context" in m] == []
    if request.node.get_closest_marker("swallows_internal_errors") is None:
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name.split(".")[0] == "obs_sdk" and r.levelno >= logging.WARNING
        ]
        assert warned == []


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """obs_sdk configured on the database; the worker thread writes there too."""
    engine = sa.create_engine(database_url)
    obs.configure(database=engine)
    yield engine
    obs.shutdown()
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlite_url)
    obs.configure(database=engine)
    yield engine
    obs.shutdown()
    engine.dispose()


def trail(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """(action, outcome, actor type, actor id or name, organization, workspace, resource id).

    Oldest first. A system actor has no id: its name (label) stands in.
    """
    assert obs.flush(timeout=10.0)
    return [
        (
            r.action,
            r.outcome,
            r.actor_type,
            r.actor_id if r.actor_id is not None else r.actor_name,
            r.organization_id,
            r.workspace_id,
            r.resource_id,
        )
        for r in in_time_order(engine)
    ]


def records(engine: sa.Engine, action: str) -> list[Any]:
    assert obs.flush(timeout=10.0)
    return [r for r in in_time_order(engine) if r.action == action]


def in_time_order(engine: sa.Engine) -> list[Any]:
    """Every record, oldest first, whatever order audit_log() lists them in."""
    return sorted(obs.audit_log(engine, limit=1000), key=lambda r: (r.occurred_at, r.id))


def wire_sign(headers: dict[str, str], secret: str, issued_at: int) -> dict[str, str]:
    """Sign *headers* by the wire format docs/propagation.md documents (any issue time)."""
    lines = ["obs-scope-v1"]
    for name in (
        "obs-workspace",
        "obs-organization",
        "obs-actor-type",
        "obs-actor-id",
        "obs-request-id",
    ):
        lines.append(f"{name}:{headers.get(name, '')}")
    lines.append(f"obs-issued-at:{issued_at}")
    digest = hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()
    return {**headers, "obs-issued-at": str(issued_at), "obs-signature": f"v1={digest}"}


ADA_HEADERS = {
    "obs-actor-type": "user",
    "obs-actor-id": "u_ada",
    "obs-organization": "org_acme",
    "obs-workspace": "ws_acme",
}


class TestPublisherScope:
    def test_worker_records_the_publishers_actor_and_tenant(
        self, shared: Tasks, engine: sa.Engine
    ) -> None:
        """A task published inside obs.scope(...) runs on the worker's own thread inside the
        same actor, organization, workspace and request id (SQLite and PostgreSQL)."""
        with obs.scope(actor=ADA, organization="org_acme", workspace="ws_acme", request_id="req_1"):
            result = shared.export.delay("r_1")
        ran_on = result.get(timeout=RESULT_TIMEOUT)
        assert ran_on != threading.current_thread().name  # the worker's thread, not ours
        assert trail(engine) == [
            ("report.exported", "success", "user", "u_ada", "org_acme", "ws_acme", "r_1")
        ]
        (record,) = records(engine, "report.exported")
        assert record.request_id == "req_1"

    def test_a_failing_task_is_audited_as_failure(self, shared: Tasks, engine: sa.Engine) -> None:
        """A task that raises through @audited(when="always") leaves a failure record with the
        publisher's actor and tenant; the task fails with the same exception (SQLite and
        PostgreSQL)."""
        with obs.scope(actor=ADA, organization="org_acme", workspace="ws_acme"):
            result = shared.export_broken.delay("r_2")
        with pytest.raises(ReportBroken):
            result.get(timeout=RESULT_TIMEOUT)
        assert trail(engine) == [
            ("report.exported", "failure", "user", "u_ada", "org_acme", "ws_acme", "r_2")
        ]
        (record,) = records(engine, "report.exported")
        assert record.error_type == "ReportBroken"

    def test_an_audited_task_records_its_success_and_failure(
        self, shared: Tasks, sqlite_engine: sa.Engine
    ) -> None:
        """@audited directly under @app.task: the task's own run is the audited action."""
        with obs.scope(actor=ADA, organization="org_acme"):
            ok = shared.audited_task.delay("r_3")
        ok.get(timeout=RESULT_TIMEOUT)
        with obs.scope(actor=ADA, organization="org_acme"):
            failed = shared.audited_task.delay("r_4", fail=True)
        with pytest.raises(ReportBroken):
            failed.get(timeout=RESULT_TIMEOUT)
        assert trail(sqlite_engine) == [
            ("report.purged", "success", "user", "u_ada", "org_acme", None, "r_3"),
            ("report.purged", "failure", "user", "u_ada", "org_acme", None, "r_4"),
        ]

    def test_outside_any_scope_the_task_runs_with_no_actor(
        self, shared: Tasks, sqlite_engine: sa.Engine
    ) -> None:
        """Published outside any scope: no headers, no actor, nothing rejected; and the
        worker's thread keeps no scope from the task it ran before."""
        with obs.scope(actor=ADA, organization="org_acme"):
            shared.export.delay("r_5").get(timeout=RESULT_TIMEOUT)
        shared.export.delay("r_6").get(timeout=RESULT_TIMEOUT)
        assert trail(sqlite_engine) == [
            ("report.exported", "success", "user", "u_ada", "org_acme", None, "r_5"),
            ("report.exported", "success", "anonymous", None, None, None, "r_6"),
        ]
        assert obs.stats()["internal_errors"] == 0

    def test_tasks_published_by_a_task_and_retries_keep_the_scope(
        self, shared: Tasks, sqlite_engine: sa.Engine
    ) -> None:
        """A task's child task and its retry are published inside its scope, so they carry
        the original publisher's actor too."""
        with obs.scope(actor=ADA, organization="org_acme"):
            child = shared.publish_child.delay("r_7")
            retried = shared.retry_once.delay("r_8")
        shared.app.AsyncResult(child.get(timeout=RESULT_TIMEOUT)).get(timeout=RESULT_TIMEOUT)
        retried.get(timeout=RESULT_TIMEOUT)
        assert shared.attempts["r_8"] == 2
        assert sorted(trail(sqlite_engine), key=lambda r: r[-1]) == [
            ("report.exported", "success", "user", "u_ada", "org_acme", None, "r_7"),
            ("report.exported", "success", "user", "u_ada", "org_acme", None, "r_8"),
        ]

    def test_groups_and_chains_carry_the_scope(
        self, shared: Tasks, sqlite_engine: sa.Engine
    ) -> None:
        """Canvas publishes through app.send_task too: a group's tasks are published here,
        a chain's second link by the worker when the first is done; all carry the scope."""
        with obs.scope(actor=ADA, organization="org_acme"):
            grouped = group(shared.export.si("r_14"), shared.export.si("r_15")).apply_async()
            chained = chain(shared.export.si("r_16"), shared.export.si("r_17")).apply_async()
        grouped.get(timeout=RESULT_TIMEOUT)
        chained.get(timeout=RESULT_TIMEOUT)
        assert sorted(trail(sqlite_engine), key=lambda r: r[-1]) == [
            ("report.exported", "success", "user", "u_ada", "org_acme", None, f"r_{n}")
            for n in (14, 15, 16, 17)
        ]

    def test_headers_passed_by_the_caller_cannot_set_the_scope(
        self, shared: Tasks, sqlite_engine: sa.Engine
    ) -> None:
        """obs-* headers given to apply_async are replaced by the current scope's (or removed):
        a caller cannot publish as someone else through an instrumented app."""
        forged = {"obs-actor-type": "user", "obs-actor-id": "u_eve", "obs-organization": "org_e"}
        shared.export.apply_async(("r_10",), headers=forged).get(timeout=RESULT_TIMEOUT)
        with obs.scope(actor=ADA, organization="org_acme"):
            result = shared.export.apply_async(("r_11",), headers=forged)
        result.get(timeout=RESULT_TIMEOUT)
        assert trail(sqlite_engine) == [
            ("report.exported", "success", "anonymous", None, None, None, "r_10"),
            ("report.exported", "success", "user", "u_ada", "org_acme", None, "r_11"),
        ]
        assert obs.stats()["internal_errors"] == 0

    def test_instrument_twice_is_a_no_op(self, shared: Tasks, sqlite_engine: sa.Engine) -> None:
        """A second call with the same secret changes nothing: one wrapper, one receiver per
        signal, and tasks still carry the scope."""
        send_task = shared.app.send_task
        receivers = [len(s.receivers) for s in (signals.before_task_publish, signals.task_prerun)]
        instrument(shared.app, secret=SECRET)
        assert shared.app.send_task is send_task
        after = [len(s.receivers) for s in (signals.before_task_publish, signals.task_prerun)]
        assert after == receivers
        with obs.scope(actor=ADA):
            shared.export.delay("r_12").get(timeout=RESULT_TIMEOUT)
        assert trail(sqlite_engine) == [
            ("report.exported", "success", "user", "u_ada", None, None, "r_12")
        ]


class TestRejectedHeaders:
    """A scope that does not verify is never applied: the task runs with no scope, and the
    rejection is counted, logged and recorded (task.scope_rejected)."""

    def publish_as_another_service(self, tasks: Tasks, headers: dict[str, str]) -> str:
        """Publish reports.export to the worker's queue from an uninstrumented app."""
        other = build_app(instrumented=False, queue=tasks.app.conf.task_default_queue)
        result = other.app.send_task("reports.export", ("r_x",), headers=headers)
        assert result.get(timeout=RESULT_TIMEOUT)  # the task ran: not dropped
        return str(result.id)

    def assert_rejected(
        self, engine: sa.Engine, task_id: str, reason: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert trail(engine) == [
            (SCOPE_REJECTED_ACTION, "failure", "system", "celery", None, None, None),
            ("report.exported", "success", "anonymous", None, None, None, "r_x"),
        ]
        (rejected,) = records(engine, SCOPE_REJECTED_ACTION)
        assert rejected.metadata == {"task": "reports.export", "task_id": task_id, "reason": reason}
        assert obs.stats()["internal_errors"] == 1
        logged = [r.getMessage() for r in caplog.records if r.name == "obs_sdk"]
        assert any("internal error in propagation" in m for m in logged)

    @pytest.mark.swallows_internal_errors
    def test_signed_with_another_secret(
        self, shared: Tasks, sqlite_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Ada's ids signed with a secret the worker does not hold."""
        headers = wire_sign(ADA_HEADERS, "not-the-secret", int(time.time()))
        task_id = self.publish_as_another_service(shared, headers)
        self.assert_rejected(sqlite_engine, task_id, "the signature does not verify", caplog)

    @pytest.mark.swallows_internal_errors
    def test_tampered_after_signing(
        self, shared: Tasks, engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Correctly signed for Eve, then the actor changed to Ada (SQLite and PostgreSQL)."""
        headers = wire_sign({**ADA_HEADERS, "obs-actor-id": "u_eve"}, SECRET, int(time.time()))
        headers["obs-actor-id"] = "u_ada"
        task_id = self.publish_as_another_service(shared, headers)
        self.assert_rejected(engine, task_id, "the signature does not verify", caplog)

    @pytest.mark.swallows_internal_errors
    def test_unsigned(
        self, shared: Tasks, sqlite_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Ids with no signature at all."""
        task_id = self.publish_as_another_service(shared, dict(ADA_HEADERS))
        self.assert_rejected(
            sqlite_engine, task_id, "the signature or its issue time is missing", caplog
        )

    @pytest.mark.swallows_internal_errors
    def test_expired(
        self, shared: Tasks, sqlite_engine: sa.Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Correctly signed, but two hours ago (max_age is one hour by default)."""
        headers = wire_sign(ADA_HEADERS, SECRET, int(time.time()) - 7200)
        task_id = self.publish_as_another_service(shared, headers)
        (rejected,) = records(sqlite_engine, SCOPE_REJECTED_ACTION)
        assert rejected.metadata["task_id"] == task_id
        assert rejected.metadata["reason"].startswith("the signature expired (")
        assert obs.stats()["internal_errors"] == 1

    def test_a_correct_signature_from_another_service_is_applied(
        self, shared: Tasks, sqlite_engine: sa.Engine
    ) -> None:
        """The control for the tests above: the same path with the right secret applies."""
        headers = wire_sign(ADA_HEADERS, SECRET, int(time.time()))
        self.publish_as_another_service(shared, headers)
        assert trail(sqlite_engine) == [
            ("report.exported", "success", "user", "u_ada", "org_acme", "ws_acme", "r_x")
        ]


class TestWorkerOptions:
    """Tests with a worker (or an app) of their own; never while a shared worker runs."""

    def test_a_delayed_task_keeps_its_scope_past_max_age(self, sqlite_engine: sa.Engine) -> None:
        """max_age counts from when the task is due: a countdown longer than max_age still
        runs as its publisher."""
        tasks = build_app(max_age=2)
        with worker(tasks):
            with obs.scope(actor=ADA, organization="org_acme"):
                result = tasks.export.apply_async(("r_9",), countdown=3)
            result.get(timeout=RESULT_TIMEOUT)
        assert trail(sqlite_engine) == [
            ("report.exported", "success", "user", "u_ada", "org_acme", None, "r_9")
        ]

    def test_concurrent_tasks_on_a_thread_pool_keep_their_own_actor(
        self, sqlite_engine: sa.Engine
    ) -> None:
        """Forty tasks of four publishers on a four-thread pool: each record carries the actor
        that published its task, never a neighbour's."""
        tasks = build_app()
        expected = []
        with worker(tasks, pool="threads", concurrency=4):
            results = []
            for n in range(40):
                user, org = f"u_{n % 4}", f"org_{n % 4}"
                with obs.scope(actor=obs.Actor.user(user), organization=org):
                    results.append(tasks.export.delay(f"r_{n:02d}"))
                expected.append(
                    ("report.exported", "success", "user", user, org, None, f"r_{n:02d}")
                )
            threads = {r.get(timeout=RESULT_TIMEOUT) for r in results}
        assert sorted(trail(sqlite_engine), key=lambda r: r[-1]) == expected
        assert len(threads) > 1  # the pool really ran them on several threads

    def test_another_app_in_the_process_is_left_alone(self, sqlite_engine: sa.Engine) -> None:
        """Celery's signals are process-wide: an app that was not instrumented (while another
        is) publishes no obs-* headers, and its worker opens no scope."""
        build_app()  # instrumented: its receivers are connected
        plain = build_app(instrumented=False)
        published: list[dict[str, Any]] = []

        def keep(headers: Any = None, **_: Any) -> None:
            published.append(dict(headers))

        signals.after_task_publish.connect(keep, weak=False)
        try:
            with worker(plain), obs.scope(actor=ADA):
                plain.export.delay("r_13").get(timeout=RESULT_TIMEOUT)
        finally:
            signals.after_task_publish.disconnect(keep)
        assert not any(name.startswith("obs-") for name in published[0])
        assert trail(sqlite_engine) == [
            ("report.exported", "success", "anonymous", None, None, None, "r_13")
        ]


class TestInstrument:
    def test_again_with_another_secret_is_refused(self) -> None:
        """The secret cannot change silently under a running app."""
        tasks = build_app()
        with pytest.raises(ConfigurationError, match="already called for this app"):
            instrument(tasks.app, secret="another-secret")

    @pytest.mark.parametrize("secret", [None, "", b"", [], [""]])
    def test_a_missing_or_empty_secret_is_a_configuration_error(self, secret: Any) -> None:
        """Caught at instrument() time, with what to pass."""
        app = Celery("no-secret", broker="memory://")
        with pytest.raises(ConfigurationError, match="secret"):
            instrument(app, secret=secret)

    @pytest.mark.parametrize("max_age", [0, -1, True, "3600"])
    def test_a_bad_max_age_is_a_configuration_error(self, max_age: Any) -> None:
        app = Celery("bad-max-age", broker="memory://")
        with pytest.raises(ConfigurationError, match="max_age"):
            instrument(app, secret=SECRET, max_age=max_age)

    def test_not_a_celery_app_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="takes a Celery app"):
            instrument(object(), secret=SECRET)  # type: ignore[arg-type]

    def test_import_obs_sdk_does_not_import_celery(self) -> None:
        """`import obs_sdk` (and obs_sdk.integrations) loads neither celery nor kombu."""
        code = (
            "import sys, json, obs_sdk, obs_sdk.integrations; "
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in {'celery', 'kombu', 'billiard'})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == []
