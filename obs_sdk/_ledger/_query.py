"""audit_log and aaudit_log: read the audit trail, newest first, a page at a time.

The trail is ordered by ``occurred_at``, then ``id``: the time says when the call happened,
and the id breaks ties between records of the same instant (several processes, or a
stepping test clock), so the order is total and a cursor is exact. Ids alone would not do:
they are made where records are rendered, and a configured ``id_factory`` need not follow
time.

Paging is keyset paging: ``after=`` names the last record of the previous page, and the
next page holds the records that follow it *in the listing's order* — older ones when
newest first (the default), newer ones with ``order="asc"`` — like Stripe's
``starting_after``. The cursor's position is read from the table in the same statement,
so a cursor keeps working however many records share its time.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Select, and_, bindparam, select, tuple_
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from obs_sdk import _config
from obs_sdk._hotpath._records import AuditRecord
from obs_sdk._ledger._tables import tables
from obs_sdk._scope._values import Resource
from obs_sdk.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["MAX_PAGE", "aaudit_log", "audit_log"]

MAX_PAGE = 10_000
ORDERS = ("desc", "asc")
Order = Literal["desc", "asc"]


class _Query:
    """One audit_log call: its checked arguments, its statement, and how to read the result."""

    def __init__(self, where: str, prefix: str, **arguments: Any) -> None:
        self.where = where
        self.table = tables(prefix).audit
        self.after = _cursor(where, arguments.pop("after"))
        self.statement = _statement(where, self.table, self.after, **arguments)

    def records(self, rows: list[Any]) -> list[AuditRecord]:
        """The page's records; an empty page after a cursor is checked by ``cursor_check``."""
        return [AuditRecord(**row) for row in rows]

    def cursor_check(self) -> Select[Any] | None:
        """A statement finding the cursor's record, when an empty page needs one."""
        if self.after is None:
            return None
        return select(self.table.c.id).where(self.table.c.id == self.after)

    def unknown_cursor(self) -> ConfigurationError:
        return ConfigurationError(
            f"{self.where}(after={str(self.after)!r}): no audit record has the id; page with "
            "after=page[-1].id from the previous page. The record may have been purged or "
            "erased since: start again without after=, or narrow with since=/until="
        )


def _cursor(where: str, after: object) -> uuid.UUID | None:
    if after is None or isinstance(after, uuid.UUID):
        return after
    try:
        return uuid.UUID(str(after))
    except ValueError:
        raise ConfigurationError(
            f"{where}(after=...) takes a record id (records[-1].id, a UUID or its string), "
            f"got {after!r}"
        ) from None


def _aware(where: str, name: str, value: object) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        raise ConfigurationError(
            f"{where}({name}=...) takes an aware datetime, got {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(
            f"{where}({name}={value!r}) is naive: pass an aware datetime, e.g. "
            "datetime.datetime.now(datetime.timezone.utc) or dt.replace(tzinfo=...); a naive "
            "one has no time zone, and records are stamped in UTC"
        )
    return value


def _statement(
    where: str,
    t: Any,
    after: uuid.UUID | None,
    *,
    organization: str | None,
    workspace: str | None,
    actor_id: str | None,
    resource: Resource | tuple[str, str | None] | None,
    action: str | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    limit: int,
    order: str,
) -> Select[Any]:
    if order not in ORDERS:
        raise ConfigurationError(
            f'{where}(order={order!r}): use "desc" (newest first, the default) or "asc"'
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ConfigurationError(
            f"{where}(limit={limit!r}): use 1 to {MAX_PAGE}, and page with after=page[-1].id"
        )
    conditions = []
    for column, value in (
        (t.c.organization_id, organization),
        (t.c.workspace_id, workspace),
        (t.c.actor_id, actor_id),
        (t.c.action, action),
    ):
        if value is not None:
            conditions.append(column == value)
    if resource is not None:
        rtype, rid = (resource.type, resource.id) if isinstance(resource, Resource) else resource
        conditions.append(t.c.resource_type == rtype)
        if rid is not None:
            conditions.append(t.c.resource_id == str(rid))
    since = _aware(where, "since", since)
    until = _aware(where, "until", until)
    if since is not None:
        conditions.append(t.c.occurred_at >= since)
    if until is not None:
        conditions.append(t.c.occurred_at < until)
    key = tuple_(t.c.occurred_at, t.c.id)
    if after is not None:
        # The cursor's (time, id), read in the same statement: a row comparison that an
        # index on (..., occurred_at, id) serves as a range (see _tables).
        at = select(t.c.occurred_at).where(t.c.id == after).scalar_subquery()
        cursor = tuple_(at, bindparam("after_id", after, type_=t.c.id.type))
        conditions.append(key < cursor if order == "desc" else key > cursor)
    ordering = (
        (t.c.occurred_at.desc(), t.c.id.desc()) if order == "desc" else (t.c.occurred_at, t.c.id)
    )
    return select(t).where(and_(True, *conditions)).order_by(*ordering).limit(limit)


def _run(query: _Query, execute: Callable[[Any], Any]) -> list[AuditRecord]:
    rows = execute(query.statement).mappings().all()
    check = query.cursor_check() if not rows else None
    if check is not None and execute(check).first() is None:
        raise query.unknown_cursor()
    return query.records(rows)


async def _arun(query: _Query, execute: Callable[[Any], Any]) -> list[AuditRecord]:
    rows = (await execute(query.statement)).mappings().all()
    check = query.cursor_check() if not rows else None
    if check is not None and (await execute(check)).first() is None:
        raise query.unknown_cursor()
    return query.records(rows)


def _configured_engine(where: str) -> Engine:
    engine = _config.current().engine
    if engine is None:
        raise ConfigurationError(
            f"{where}() has no database to read: call obs.configure(database=...) first, "
            f"or pass the bind (an Engine, Connection or Session) to read"
        )
    return engine


def audit_log(
    bind: Engine | Connection | Session | None = None,
    *,
    organization: str | None = None,
    workspace: str | None = None,
    actor_id: str | None = None,
    resource: Resource | tuple[str, str | None] | None = None,
    action: str | None = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    limit: int = 100,
    after: uuid.UUID | str | None = None,
    order: Order = "desc",
) -> list[AuditRecord]:
    """Read audit records, newest first: a page of at most *limit* (1 to 10000).

    Ordered by ``occurred_at``, then ``id`` (ties in time are broken by the id, so the
    order is total); ``order="asc"`` lists the oldest first. Page with
    ``after=page[-1].id``: the next page holds the records that follow that one in the
    same order (older ones newest first, newer ones with ``order="asc"``); an id that is
    in no record raises ``ConfigurationError`` rather than end the paging early.

    *bind* is an Engine, a Connection or a Session (which sees its own uncommitted rows);
    without one, the database given to ``configure()`` (call ``obs.flush()`` first to see
    records just made). Filters: *organization*, *workspace*, *actor_id*, *resource* (an
    ``obs.Resource`` or a ``(type, id)`` pair; id None matches every id), *action*, and
    the time window *since* (inclusive) and *until* (exclusive), both aware datetimes.
    Timestamps come back as aware UTC datetimes. Thread-safe; blocks on the database.

    Raises:
        ConfigurationError: an argument cannot be right (a naive datetime, an unknown
            order or cursor, a limit out of range, an async bind: use ``aaudit_log``).
    """
    query = _Query(
        "audit_log",
        _config.current().table_prefix,
        organization=organization,
        workspace=workspace,
        actor_id=actor_id,
        resource=resource,
        action=action,
        since=since,
        until=until,
        limit=limit,
        after=after,
        order=order,
    )
    if bind is None:
        bind = _configured_engine("audit_log")
    if isinstance(bind, (AsyncEngine, AsyncConnection, AsyncSession)):
        raise ConfigurationError(
            f"audit_log() got an {type(bind).__name__}: use `await obs.aaudit_log(...)` "
            "for async engines, connections and sessions"
        )
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return _run(query, conn.execute)
    if not callable(getattr(bind, "execute", None)):
        raise ConfigurationError(
            "audit_log(bind=...) takes an Engine, a Connection or a Session (or None: the "
            f"configured database), got {type(bind).__name__}"
        )
    return _run(query, bind.execute)


# The keyword arguments repeat audit_log's on purpose (a deliberate duplicate): each public
# twin spells out its signature so help(), IDEs and type checkers show every filter, as
# httpx's Client and AsyncClient do. What they mean is checked once, in _Query.
async def aaudit_log(
    bind: AsyncEngine | AsyncConnection | AsyncSession | Engine | None = None,
    *,
    organization: str | None = None,
    workspace: str | None = None,
    actor_id: str | None = None,
    resource: Resource | tuple[str, str | None] | None = None,
    action: str | None = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    limit: int = 100,
    after: uuid.UUID | str | None = None,
    order: Order = "desc",
) -> list[AuditRecord]:
    """Async twin of ``audit_log``: the same arguments, order and paging.

    *bind* is an AsyncEngine, AsyncConnection or AsyncSession. Without one it reads the
    database given to ``configure()``: through the AsyncEngine given there, or else through
    its sync engine on a worker thread, never blocking the event loop. A sync Engine is
    read on a worker thread too.

    Raises:
        ConfigurationError: as ``audit_log``; a sync Connection or Session (use
            ``audit_log``, on the thread that owns it).
    """
    arguments: dict[str, Any] = {
        "organization": organization,
        "workspace": workspace,
        "actor_id": actor_id,
        "resource": resource,
        "action": action,
        "since": since,
        "until": until,
        "limit": limit,
        "after": after,
        "order": order,
    }
    config = _config.current()
    query = _Query("aaudit_log", config.table_prefix, **arguments)
    if bind is None:
        bind = config.async_engine or _configured_engine("aaudit_log")
    if isinstance(bind, Engine):
        return await asyncio.to_thread(audit_log, bind, **arguments)
    if isinstance(bind, AsyncEngine):
        async with bind.connect() as conn:
            return await _arun(query, conn.execute)
    if isinstance(bind, (AsyncConnection, AsyncSession)):
        return await _arun(query, bind.execute)
    raise ConfigurationError(
        "aaudit_log(bind=...) takes an AsyncEngine, AsyncConnection or AsyncSession (or "
        f"None: the configured database), got {type(bind).__name__}; for a sync "
        "Connection or Session, call obs.audit_log() on the thread that owns it"
    )
