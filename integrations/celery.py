"""Celery: the publisher's scope travels with each task, signed, and the worker runs the task in it.

::

    from celery import Celery
    from obs_sdk.integrations.celery import instrument

    app = Celery("billing", broker=...)
    instrument(app, secret=os.environ["OBS_SCOPE_SECRET"])   # publishers and workers alike

    with obs.scope(actor=obs.Actor.user("u_1"), organization="org_1"):
        export_report.delay("r_1")     # @audited code in the task records u_1 and org_1

The scope's ids (actor, workspace, organization, request id) go in the message headers,
signed as ``obs_sdk.propagation`` signs them; the worker verifies the signature and opens
``obs.scope(...)`` with them around the task. How each piece is hooked, and why:

- publishing: ``app.send_task`` (which ``delay``, ``apply_async``, retries, chains and
  groups all go through) is wrapped on this app only, so that Celery's global
  ``before_task_publish`` signal knows which app, hence which secret, is publishing; the
  signal handler writes the headers last, after Celery merged the caller's ``headers=``,
  so a caller cannot smuggle ids in, and it sees the task's final ``eta``;
- running: ``task_prerun`` opens the scope and ``task_postrun`` closes it. Celery sends
  both from one function on the thread that runs the task (``postrun`` from a
  ``finally``), so the scope's context token is reset in the context that set it, and a
  pooled thread never keeps a task's scope. ``on_failure``, ``task_failure`` handlers and
  the tasks a task publishes (a retry included) all run inside the scope;
- exiting: a prefork pool child ends with ``os._exit`` (after ``max_tasks_per_child``
  tasks, or at shutdown), which skips obs_sdk's atexit hook, so ``worker_process_shutdown``
  delivers what the child queued first (``obs.flush``, at most five seconds).
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import obs_sdk as obs
from obs_sdk._integration_api import (
    extract_signed_scope,
    guard,
    inject_signed_scope,
    signing_keys,
)
from obs_sdk.exceptions import ConfigurationError, MissingDependencyError

try:
    from celery import Celery, signals  # type: ignore[import-untyped]  # no stubs or py.typed
except ImportError:
    raise MissingDependencyError(package="celery", extra="celery") from None

__all__ = ["DEFAULT_MAX_AGE_SECONDS", "SCOPE_REJECTED_ACTION", "instrument"]

# A queue is slower than an HTTP call: an hour of backlog still runs as its publisher.
DEFAULT_MAX_AGE_SECONDS = 3600
SCOPE_REJECTED_ACTION = "task.scope_rejected"
EXIT_FLUSH_TIMEOUT_SECONDS = 5.0  # how long an exiting pool child waits for its records

_CONFIG = "_obs_sdk_celery"  # the app's _Config, set by instrument()
_SCOPE = "_obs_sdk_scope"  # on a running task's request: the scope prerun entered

# The app publishing on this thread (set by its wrapped send_task): Celery's publish signal
# is global and does not say which app sent the message.
_publishing: contextvars.ContextVar[_Config | None] = contextvars.ContextVar(
    "obs_sdk_celery_publishing", default=None
)


@dataclass(frozen=True, slots=True)
class _Config:
    keys: tuple[bytes, ...]
    max_age: float


def instrument(
    celery_app: Celery,
    *,
    secret: str | bytes | list[str | bytes],
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
) -> None:
    """Carry the publisher's scope to *celery_app*'s tasks, signed with *secret*.

    Call it where the app is defined, so that publishers and workers both run it.
    A task published inside ``obs.scope(...)`` carries the scope's actor (users and
    service accounts), workspace, organization and request id in its message headers,
    with an HMAC-SHA256 signature (``obs_sdk.propagation``'s wire format); the worker
    runs it inside ``obs.scope(...)`` with those values, so ``@obs.audited`` and
    ``@obs.tracked`` code in the task records them, and a task that raises through
    ``@obs.audited`` leaves its ``failure`` record as anywhere else. A task published
    outside any scope carries nothing and runs with no scope.

    The signature must verify with one of the secrets (pass ``[new, old]`` while
    rotating; tasks are signed with the first) and be at most *max_age* seconds old when
    the task starts, counted from the time the task was due (its ``eta`` or
    ``countdown``), so a delayed task keeps its scope. A forged, tampered, unsigned or
    expired scope is never applied: the task still runs (it is not dropped), with no
    scope; the rejection is logged, counted in ``obs.stats()["internal_errors"]`` and
    recorded as a ``task.scope_rejected`` audit record (outcome ``failure``, actor
    ``system:celery``, metadata ``task``, ``task_id`` and ``reason``).

    Idempotent: calling it again for the same app with the same secret and *max_age*
    changes nothing. Thread-safe once called; call it before the app publishes.

    Raises:
        ConfigurationError: *celery_app* is not a Celery app, *secret* is missing or
            empty, *max_age* is not a positive number, or the app was instrumented with
            another secret or *max_age*.
    """
    if not isinstance(celery_app, Celery):
        raise ConfigurationError(f"instrument(celery_app) takes a Celery app, got {celery_app!r}")
    if secret is None or (isinstance(secret, (str, bytes, list, tuple)) and not secret):
        raise ConfigurationError(
            f"instrument(celery_app, secret=...) needs the secret that publishers and workers "
            f"share (for example os.environ['OBS_SCOPE_SECRET']), got {secret!r}: without it "
            "anyone who can publish to the broker could run tasks as any user"
        )
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not max_age > 0:
        raise ConfigurationError(
            f"instrument(max_age=...) takes a positive number of seconds, got {max_age!r}"
        )
    config = _Config(signing_keys(secret, "instrument"), float(max_age))
    current = getattr(celery_app, _CONFIG, None)
    if current is not None:
        if current != config:
            raise ConfigurationError(
                "instrument(celery_app) was already called for this app with another secret "
                "or max_age: call it once, with the secret its workers verify"
            )
        return
    _connect_signals()
    send_task = celery_app.send_task

    @functools.wraps(send_task)
    def send_task_with_scope(*args: Any, **kwargs: Any) -> Any:
        token = _publishing.set(config)
        try:
            return send_task(*args, **kwargs)
        finally:
            _publishing.reset(token)

    # An instance attribute shadows the method for this app only.
    setattr(celery_app, "send_task", send_task_with_scope)  # noqa: B010
    setattr(celery_app, _CONFIG, config)


def _connect_signals() -> None:
    # dispatch_uid: connecting again (another app) replaces rather than adds a receiver.
    signals.before_task_publish.connect(
        _before_task_publish, weak=False, dispatch_uid="obs_sdk.celery.publish"
    )
    signals.task_prerun.connect(_task_prerun, weak=False, dispatch_uid="obs_sdk.celery.prerun")
    signals.task_postrun.connect(_task_postrun, weak=False, dispatch_uid="obs_sdk.celery.postrun")
    signals.worker_process_shutdown.connect(
        _deliver_before_exit, weak=False, dispatch_uid="obs_sdk.celery.process_shutdown"
    )


def _before_task_publish(headers: Any = None, **_: Any) -> None:
    """Write the current scope's ids, signed, into an instrumented app's message headers."""
    config = _publishing.get()
    if config is None or not isinstance(headers, MutableMapping):
        return  # another app, or task protocol 1 (no headers)
    with guard("celery.publish"):
        # Signed as issued when the task is due, so a countdown does not eat max_age.
        # Also removes the obs-* fields the caller passed.
        inject_signed_scope(headers, config.keys, issued_at=_due(headers.get("eta")))


def _due(eta: object) -> float:
    """Return when the task is due to run (Unix seconds): its eta, else now."""
    now = time.time()
    if not isinstance(eta, str):
        return now
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return now
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # Celery sends aware times; be safe
    return max(now, when.timestamp())


def _task_prerun(task: Any = None, **_: Any) -> None:
    """Enter the scope the task's headers carry (on the thread that runs the task)."""
    config = getattr(getattr(task, "app", None), _CONFIG, None)
    if config is None:
        return
    with guard("celery.task_prerun"):
        request = task.request
        carried, rejected = extract_signed_scope(request, config.keys, max_age=config.max_age)
        if rejected is not None:
            _record_rejected(task.name, request.id, rejected)
            return
        if carried == obs.Scope():
            return  # published outside any scope
        manager = obs.scope(
            actor=carried.actor,
            workspace=carried.workspace,
            organization=carried.organization,
            request_id=carried.request_id,
        )
        manager.__enter__()
        setattr(request, _SCOPE, manager)


def _task_postrun(task: Any = None, **_: Any) -> None:
    """Leave the scope prerun entered for this request, if any (same thread, same context)."""
    with guard("celery.task_postrun"):
        manager = vars(task.request).pop(_SCOPE, None)
        if manager is not None:
            manager.__exit__(None, None, None)


def _deliver_before_exit(**_: Any) -> None:
    """Deliver what a prefork pool child queued: it exits with os._exit, skipping atexit."""
    with guard("celery.process_shutdown"):
        obs.flush(timeout=EXIT_FLUSH_TIMEOUT_SECONDS)


def _record_rejected(task_name: str, task_id: str, reason: str) -> None:
    """Leave a durable trace of a scope that was not applied: a forgery names no tenant."""
    with obs.scope(actor=obs.Actor.system("celery")):
        obs.record_audit(
            SCOPE_REJECTED_ACTION,
            metadata={"task": task_name, "task_id": task_id, "reason": reason},
            outcome="failure",
        )
