"""@audited, record_audit, record_audit_now and arecord_audit_now (audit_log: see _query)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from obs_sdk import _config
from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._guard import count_error
from obs_sdk._hotpath._emit import emit
from obs_sdk._hotpath._plain import Call, freeze
from obs_sdk._hotpath._records import (
    AUDIT,
    FAILURE,
    STORED,
    SUCCESS,
    AuditRecord,
    IdCollision,
    Instrumentation,
    RawRecord,
    add_plain_tenant,
    add_tenant,
    render_audit,
    uuid7,
)
from obs_sdk._hotpath._templates import Plan
from obs_sdk._hotpath._wrapping import When, build_plan, defined_at, instrument, params_of
from obs_sdk._ledger._changes import check_changes, emit_changes, pending_changes
from obs_sdk._ledger._tables import insert_ignoring_duplicates, tables
from obs_sdk._scope._values import Resource
from obs_sdk.exceptions import AuditWriteError, ConfigurationError

# Annotations only: the hot path imports no SQLAlchemy (tests/unit/test_boundaries.py).
if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["arecord_audit_now", "audited", "record_audit", "record_audit_now"]

P = ParamSpec("P")
R = TypeVar("R")


def _check_action(action: object, where: str) -> str:
    if not isinstance(action, str) or not action.strip():
        raise ConfigurationError(f"{where} needs an action name such as 'file.downloaded'")
    return action


def _check_resource(resource: object, where: str) -> Resource | None:
    if resource is not None and not isinstance(resource, Resource):
        raise ConfigurationError(
            f"{where}: resource= takes obs.Resource(type, id, name=None), got {resource!r}"
        )
    return resource


def audited(
    action: str,
    *,
    resource: Resource | None = None,
    metadata: Mapping[str, Any] | Callable[[Call], Mapping[str, Any]] | None = None,
    when: When = "success",
    emit_if: Callable[[Call], bool] | None = None,
    organization: str | Callable[[Call], Any] | None = None,
    workspace: str | Callable[[Call], Any] | None = None,
    changes: bool | Iterable[str | type[Any]] = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Write an audit record for each call of the decorated function.

    ``when`` is "success" (default: only after the function returned normally),
    "failure", "always", or "start" (when the call starts, before any result: for egress).
    ``resource`` fields and ``metadata`` values are templates over the arguments and
    ``result`` (``"{file_id}"``, ``"{result.size}"``), constants, or callables taking the
    call; ``metadata`` may also be one callable returning the whole dict. ``emit_if`` (a
    callable taking the call) drops the record when it returns False.

    ``organization`` and ``workspace`` name the tenant where it arrives as an argument
    (a webhook's customer, a job's payload), with the same template rules:
    ``organization="{event.data.object.metadata.org}"``. They win over the scope's, as one
    unit like nested scopes: when either is given, the record's workspace and organization
    are the decorator's (the one not given is None); when both render to None, the
    scope's pair stands.

    ``changes=True`` attaches to each success record what the call wrote through the scope's
    session: a list of ``{"table", "pk", "op", "fields": {name: [old, new]}}``, read from
    SQLAlchemy's attribute history (never by a query), only the fields that changed and
    only the call's own changes; ``changes=("Document", "Membership")`` limits it to those
    mapped classes. Core statements run through the session are reported as
    ``{"op": "bulk", "table", "statement", "rows"}``. Needs ``obs.scope(session=...)``;
    plain and async functions only. See docs/changes.md.

    Templates are checked against the signature here: a mistake raises
    ``ConfigurationError``. Works on plain and async functions, generators, async
    generators and methods; the wrapped function keeps its name, signature and docstring.
    Thread-safe; records follow the scope of the calling thread or task.
    """
    where = "@audited(...)"
    _check_action(action, where)
    _check_resource(resource, f"@audited({action!r})")
    if emit_if is not None and not callable(emit_if):
        raise ConfigurationError(f"@audited({action!r}): emit_if= takes a callable or None")
    wanted = check_changes(changes, f"@audited({action!r})")
    if wanted and when not in ("success", "always"):
        raise ConfigurationError(
            f"@audited({action!r}): changes= goes with when='success' or 'always' (changes "
            f"are attached to success records), not when={when!r}"
        )

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        params = params_of(func, "@audited")
        owner = f"@audited({action!r}) on {defined_at(func, params.qualname)}"
        target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
        if wanted and (inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)):
            raise ConfigurationError(
                f"{owner}: changes= follows plain and async functions, not generators; "
                "audit the function that writes, or call record_audit(..., changes=True)"
            )
        plan = build_plan(owner, params, when)
        if resource is not None:
            plan.add("resource.type", resource.type)
            plan.add("resource.id", resource.id)
            plan.add("resource.name", resource.name)
        plan.add_mapping("metadata", metadata)
        add_tenant(plan, workspace, organization)
        spec = Instrumentation(AUDIT, action, plan, when=when, emit_if=emit_if, changes=wanted)
        return instrument(func, spec)  # type: ignore[no-any-return]

    return decorate


def _manual_spec(
    action: str,
    resource: Resource | None,
    metadata: Mapping[str, Any] | None,
    where: str,
    tenant: tuple[str | None, str | None] = (None, None),
) -> Instrumentation:
    _check_action(action, where)
    _check_resource(resource, where)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ConfigurationError(f"{where}: metadata= takes a dict, got {type(metadata).__name__}")
    plan = Plan(where, None, "success")
    if resource is not None:
        plan.slots["resource.type"] = ("const", freeze(resource.type))
        plan.slots["resource.id"] = ("const", freeze(resource.id))
        plan.slots["resource.name"] = ("const", freeze(resource.name))
    plan.whole = "metadata"
    plan.slots["metadata"] = ("const", freeze(dict(metadata or {})))
    add_plain_tenant(plan, where, *tenant)
    return Instrumentation(AUDIT, action, plan)


def _check_outcome(outcome: str, where: str) -> str:
    if outcome not in (SUCCESS, FAILURE):
        raise ConfigurationError(f"{where}: outcome= is 'success' or 'failure', got {outcome!r}")
    return outcome


# record_audit, record_audit_now and arecord_audit_now repeat their keyword parameters on
# purpose (duplicates lists the three): they are public, and an explicit signature is what
# help(), inspect.signature, IDEs and tests/typing see. A shared **kwargs (a TypedDict
# with Unpack) would hide it; the logic behind them is shared (_manual_spec, _render_now).
def record_audit(
    action: str,
    *,
    resource: Resource | None = None,
    metadata: Mapping[str, Any] | None = None,
    outcome: str = "success",
    organization: str | None = None,
    workspace: str | None = None,
    changes: bool | Iterable[str | type[Any]] = False,
) -> None:
    """Record an audit entry by hand; it follows the scope like a decorated call does.

    A success record joins the scope's transaction (inserted at commit, dropped on
    rollback); a failure record is queued at once. ``organization`` / ``workspace``
    (strings) win over the scope's pair as one unit, as in ``@audited``. ``changes=True``
    (or mapped class names) attaches what the scope's session holds unflushed right now,
    as ``@audited(changes=...)`` does: call it before the flush or commit that sends them.
    Never raises for instrumentation errors.
    """
    where = f"record_audit({action!r})"
    spec = _manual_spec(action, resource, metadata, where, (workspace, organization))
    outcome = _check_outcome(outcome, "record_audit")
    wanted = check_changes(changes, where)
    if not wanted:
        emit(spec, outcome, (), {}, None, None)
        return
    spec.changes = wanted
    emit_changes(spec, outcome, (), {}, None, pending_changes(spec))


def _render_now(
    action: str,
    resource: Resource | None,
    metadata: Mapping[str, Any] | None,
    outcome: str,
    tenant: tuple[str | None, str | None],
) -> AuditRecord | None:
    spec = _manual_spec(action, resource, metadata, f"record_audit_now({action!r})", tenant)
    made: list[RawRecord] = []
    emit(spec, _check_outcome(outcome, "record_audit_now"), (), {}, None, None, made.append)
    return render_audit(made[0]) if made else None


def record_audit_now(
    action: str,
    *,
    resource: Resource | None = None,
    metadata: Mapping[str, Any] | None = None,
    outcome: str = "success",
    organization: str | None = None,
    workspace: str | None = None,
) -> None:
    """Write an audit record and commit it on its own connection before returning.

    For actions that must leave a trail even if what follows fails (a credential shown, a
    permission granted). Takes what ``record_audit`` takes. Thread-safe; blocks on the
    database.

    Raises:
        AuditWriteError: the record could not be committed (obs_sdk not configured, the
            database unreachable, ...). The caller asked to wait, so it decides what to do.
    """
    record = _render_now(action, resource, metadata, outcome, (workspace, organization))
    if record is None:
        return
    engine = _engine_or_raise()
    try:
        record = _write(engine, record)
    except Exception as exc:
        raise AuditWriteError(f"could not write audit record {action!r}: {exc}") from exc
    dispatcher.submit((STORED, record))  # stored: for the other sinks (OTel logs) and stats()


def _write(engine: Engine, record: AuditRecord) -> AuditRecord:
    """Insert and commit *record*; return it as stored (under a new id if its id was taken)."""
    statement, returning = _checked_insert_for(engine)
    with engine.begin() as conn:
        for _ in range(_WRITE_ATTEMPTS):
            if _written(conn.execute(statement, record.as_dict()), returning):
                return record
            record = _replacing_id(record)
    raise RuntimeError(f"no free id after {_WRITE_ATTEMPTS} attempts")


async def _awrite(engine: AsyncEngine, record: AuditRecord) -> AuditRecord:
    """``_write`` on an AsyncEngine."""
    statement, returning = _checked_insert_for(engine)
    async with engine.begin() as conn:
        for _ in range(_WRITE_ATTEMPTS):
            if _written(await conn.execute(statement, record.as_dict()), returning):
                return record
            record = _replacing_id(record)
    raise RuntimeError(f"no free id after {_WRITE_ATTEMPTS} attempts")


async def arecord_audit_now(
    action: str,
    *,
    resource: Resource | None = None,
    metadata: Mapping[str, Any] | None = None,
    outcome: str = "success",
    organization: str | None = None,
    workspace: str | None = None,
) -> None:
    """Async twin of ``record_audit_now``: committed before it returns, without blocking the loop.

    Raises:
        AuditWriteError: the record could not be committed.
    """
    record = _render_now(action, resource, metadata, outcome, (workspace, organization))
    if record is None:
        return
    async_engine = _config.current().async_engine
    engine = _engine_or_raise() if async_engine is None else None
    try:
        if engine is not None:  # a sync engine: write on a worker thread, not on the loop
            record = await asyncio.to_thread(_write, engine, record)
        else:
            record = await _awrite(async_engine, record)  # type: ignore[arg-type]
    except Exception as exc:
        raise AuditWriteError(f"could not write audit record {action!r}: {exc}") from exc
    dispatcher.submit((STORED, record))


# A record's id found taken (ON CONFLICT skipped the insert) is replaced, never dropped.
_WRITE_ATTEMPTS = 5


def _checked_insert_for(engine: Any) -> tuple[Any, bool]:
    """The insert skipping a taken id, with ``RETURNING id`` where the dialect has it."""
    statement = _insert_for(engine)
    if engine.dialect.insert_returning:
        return statement.returning(statement.table.c.id), True
    return statement, False


def _written(result: Any, returning: bool) -> bool:
    """Whether a one-row insert wrote its row (ON CONFLICT may have skipped it)."""
    # A returned row, not the row count: psycopg may report -1 (see once()).
    return result.first() is not None if returning else result.rowcount == 1


def _replacing_id(record: AuditRecord) -> AuditRecord:
    """The record under a new id, its old one being taken; logged and counted."""
    replaced = record._replace(id=uuid7.replacing(record.id))
    count_error("record_audit_now", IdCollision(record.id, replaced.id))
    return replaced


def _engine_or_raise() -> Engine:
    engine = _config.current().engine
    if engine is None:
        raise AuditWriteError(
            "obs_sdk is not configured: call obs.configure(database=...) before record_audit_now"
        )
    return engine


def _insert_for(engine: Any) -> Any:
    return insert_ignoring_duplicates(
        tables(_config.current().table_prefix).audit, engine.dialect.name
    )
