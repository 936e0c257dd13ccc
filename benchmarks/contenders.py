"""The baselines and obs_sdk's own contenders, each a wrapped ``f(x)``.

Baselines: the bare call, a ``functools.wraps`` passthrough, the closure practical floor
(ContextVar.get + tuple + deque.append: the least any decorator that records something does)
and a ``wrapt`` passthrough. obs_sdk: ``@audited`` with 0, 2 and 5 template fields, inside a
transaction, with the dispatcher's worker running, ``@tracked``, both stacked, and async twins.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import wrapt
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import obs_sdk as obs
from benchmarks.harness import Entry
from obs_sdk._delivery._dispatch import dispatcher

# Far above what any block queues: a timed block never takes the drop path.
QUEUE_SIZE = 50_000_000
QUEUE_BYTES = 1 << 40


def f(x: Any) -> Any:
    return x


async def af(x: Any) -> Any:
    return x


# -- baselines ---------------------------------------------------------------------------------


def functools_passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def async_functools_passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


_actor: ContextVar[str | None] = ContextVar("bench_actor", default=None)
_floor_sink: deque[tuple[str, str | None, tuple[Any, ...]]] = deque()


def clear_floor() -> None:
    """Drop the closure floor's records (between blocks, outside the timed region)."""
    _floor_sink.clear()


def closure_floor(func: Callable[..., Any]) -> Callable[..., Any]:
    """The practical floor: read who acts, build a small record, hand it off."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        _floor_sink.append(("f.call", _actor.get(), args))
        return result

    return wrapper


def async_closure_floor(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await func(*args, **kwargs)
        _floor_sink.append(("f.call", _actor.get(), args))
        return result

    return wrapper


@wrapt.decorator
def wrapt_passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def _require_wrapt_c_extension(decorated: object) -> None:
    # wrapt falls back to pure Python silently; its C wrapper type lives in module "_wrappers".
    if type(decorated).__module__ != "_wrappers":
        raise SystemExit("wrapt's C extension is not active: the wrapt rows would mislead")


def baseline_entries() -> list[Entry]:
    """The bare call, the passthroughs and the closure floor, sync and async."""
    _actor.set("user:u_1")
    wrapt_f = wrapt_passthrough(f)
    _require_wrapt_c_extension(wrapt_f)
    nothing = "nothing"
    floor_record = "('f.call', actor, args) appended to a deque"
    return [
        Entry("bare", "bare call f(x)", f, "baseline", nothing),
        Entry(
            "functools",
            "functools.wraps passthrough",
            functools_passthrough(f),
            "baseline",
            nothing,
        ),
        Entry(
            "floor",
            "closure floor (ContextVar.get + tuple + deque.append)",
            closure_floor(f),
            "baseline",
            floor_record,
            between=clear_floor,
        ),
        Entry("wrapt", "wrapt passthrough (C extension)", wrapt_f, "baseline", nothing),
        Entry("a-bare", "async: bare await af(x)", af, "baseline", nothing, is_async=True),
        Entry(
            "a-functools",
            "async: functools.wraps passthrough",
            async_functools_passthrough(af),
            "baseline",
            nothing,
            is_async=True,
        ),
        Entry(
            "a-floor",
            "async: closure floor",
            async_closure_floor(af),
            "baseline",
            floor_record,
            is_async=True,
            between=clear_floor,
        ),
        Entry(
            "a-wrapt",
            "async: wrapt passthrough",
            wrapt_passthrough(af),
            "baseline",
            nothing,
            is_async=True,
        ),
    ]


# -- obs_sdk -----------------------------------------------------------------------------------

ACTOR = obs.Actor.user("u_1", name="Ada", email="ada@example.com")
AUDIT_ROW = (
    "one audit row: id, time, action, outcome, actor (type, id, name, email), workspace, "
    "organization, trace/span ids, service{fields}; {when}"
)
LATER = "written later by the worker"


def audited_with(fields: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@audited`` with 0, 1, 2, 5 or 10 template fields over the argument and the result."""
    if fields == 0:
        return obs.audited("item.read")
    if fields == 1:
        return obs.audited("item.read", resource=obs.Resource("item", "{x}"))
    if fields == 2:
        return obs.audited(
            "item.read", resource=obs.Resource("item", "{x}"), metadata={"value": "{result}"}
        )
    if fields == 5:
        return obs.audited(
            "item.read",
            resource=obs.Resource("item", "{x}", name="item {x}"),
            metadata={"value": "{result}", "x": "{x}", "label": "{x!r}"},
        )
    if fields == 10:
        return obs.audited(
            "item.read",
            resource=obs.Resource("item", "{x}", name="item {x}"),
            metadata={f"m{i}": "{result}" if i % 2 else "{x}" for i in range(8)},
        )
    raise ValueError(f"no audited variant with {fields} fields")


def _nothing_routed(run: Any) -> bool:
    return False


@contextmanager
def router_held() -> Iterator[None]:
    """Keep records in the intake: the router finds nothing to route while inside.

    A benchmark's own hook, from outside: it shadows the dispatcher's ``_route_slice`` on
    the instance. obs_sdk has no pause switch; the intake and its bound work as in
    production (the caller's path is what the overhead rows time).
    """
    dispatcher._route_slice = _nothing_routed  # type: ignore[method-assign]
    try:
        yield
    finally:
        del dispatcher._route_slice


class ObsControl:
    """obs_sdk configured on a temp SQLite file, held in the state the overhead rows need.

    The queued rows measure what the caller pays on the production path: obs_sdk is
    configured (tables, queue bound, PostHog client, the threads started) and the router is
    held (``router_held``), so that no delivery runs inside a timed block. Between blocks,
    outside the timed region, the waiting records are discarded. The end-to-end row lets
    the router go for its block (it routes and the sink's worker writes while the caller
    runs, as in production) and waits, inside the timed region, until every record of the
    block is written: the caller's cost plus the render and INSERT, per call.
    """

    def __init__(self, workdir: Path, posthog_client: Any) -> None:
        self.url = f"sqlite:///{workdir / 'overhead.db'}"
        self.posthog = posthog_client
        self.engine = create_engine(f"sqlite:///{workdir / 'app.db'}")
        self._configure()
        self._held = router_held()
        self._held.__enter__()

    def _configure(self) -> None:
        obs.configure(
            database=self.url,
            posthog=self.posthog,
            service="bench",
            queue_size=QUEUE_SIZE,
            max_queue_bytes=QUEUE_BYTES,
            handle_signals=False,
        )

    def discard(self) -> None:
        # The queued rows never deliver: the worker's cost is measured by obs0-e2e and throughput.
        dispatcher.queue.clear()

    def check(self) -> None:
        stats = obs.stats()
        if stats["dropped"] or stats["failed"]:
            raise RuntimeError(f"obs_sdk dropped or failed records inside a block: {stats}")

    @contextmanager
    def scope(self) -> Iterator[None]:
        with obs.scope(actor=ACTOR, workspace="ws_1", organization="org_1"):
            yield

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A scope whose session holds success records until commit; rolled back after."""
        with Session(self.engine) as session:
            with obs.scope(actor=ACTOR, workspace="ws_1", organization="org_1", session=session):
                yield
            session.rollback()  # drops the held records: the commit's insert is not timed

    @contextmanager
    def worker_running(self) -> Iterator[None]:
        """The router and the sink's worker deliver while the caller runs, this block only."""
        self._held.__exit__(None, None, None)
        try:
            with self.scope():
                yield
        finally:
            self._held = router_held()
            self._held.__enter__()

    def deliver(self) -> None:
        """Wait until the worker wrote every record of the block (timed: its CPU counts)."""
        if not obs.flush(timeout=60.0):
            raise RuntimeError(f"obs_sdk did not deliver a block's records: {obs.stats()}")

    def close(self) -> None:
        self._held.__exit__(None, None, None)
        obs.shutdown()
        self.engine.dispose()


def obs_entries(control: ObsControl) -> list[Entry]:
    """obs_sdk's rows: the caller's cost with records queued, held, or drained live."""
    common = {"kind": "obs", "between": control.discard, "check": control.check}
    scoped = {**common, "context": control.scope}
    event = (
        "one PostHog event (distinct_id, $groups, properties, uuid, timestamp), "
        "sent later by the worker"
    )
    tracked = obs.tracked("item_read", properties={"x": "{x}"})
    return [
        Entry(
            "obs0",
            "@audited, 0 fields (queued)",
            audited_with(0)(f),
            records=AUDIT_ROW.format(fields="", when=LATER),
            **scoped,
        ),
        Entry(
            "obs2",
            "@audited, 2 fields (queued)",
            audited_with(2)(f),
            records=AUDIT_ROW.format(fields=", resource id, metadata.value", when=LATER),
            **scoped,
        ),
        Entry(
            "obs5",
            "@audited, 5 fields (queued)",
            audited_with(5)(f),
            records=AUDIT_ROW.format(
                fields=", resource id and name, 3 metadata values", when=LATER
            ),
            **scoped,
        ),
        Entry(
            "obs0-tx",
            "@audited, 0 fields, inside a transaction (held to commit)",
            audited_with(0)(f),
            records=AUDIT_ROW.format(fields="", when="inserted by the session's commit"),
            **{**common, "context": control.transaction},
        ),
        Entry(
            "obs0-e2e",
            "@audited, 0 fields, end to end: worker's render + INSERT included (SQLite)",
            audited_with(0)(f),
            kind="obs-e2e",
            records=AUDIT_ROW.format(fields="", when=LATER),
            context=control.worker_running,
            finish=control.deliver,
            check=control.check,
            # Each batch costs a transaction: blocks of more than a batch (500 records)
            # amortise it as a busy process does, instead of charging it to a few calls.
            block_scale=10,
        ),
        Entry("trk", "@tracked, 1 property (queued)", tracked(f), records=event, **scoped),
        Entry(
            "stack",
            "@audited + @tracked stacked (queued)",
            audited_with(0)(tracked(f)),
            records="the audit row and the PostHog event above",
            **scoped,
        ),
        Entry(
            "a-obs0",
            "async: @audited, 0 fields (queued)",
            audited_with(0)(af),
            records=AUDIT_ROW.format(fields="", when=LATER),
            is_async=True,
            **scoped,
        ),
        Entry(
            "a-trk",
            "async: @tracked, 1 property (queued)",
            tracked(af),
            records=event,
            is_async=True,
            **scoped,
        ),
    ]


def scaling_entries(control: ObsControl) -> list[Entry]:
    """``@audited`` as template fields and scope fields grow (the hot path's cost model)."""
    common = {"kind": "obs", "between": control.discard, "check": control.check, "records": ""}
    entries = [
        Entry(
            f"tpl{n}",
            f"{n} template fields; actor, workspace, organization",
            audited_with(n)(f),
            context=control.scope,
            **common,
        )
        for n in (0, 1, 2, 5, 10)
    ]
    scopes: dict[str, dict[str, Any]] = {
        "no scope": {},
        "actor": {"actor": ACTOR},
        "actor, workspace, organization": {
            "actor": ACTOR,
            "workspace": "ws_1",
            "organization": "org_1",
        },
        "all 6 scope fields": {
            "actor": ACTOR,
            "workspace": "ws_1",
            "organization": "org_1",
            "ip": "203.0.113.5",
            "user_agent": "curl/8.5",
            "request_id": "req_9",
        },
    }
    for i, (label, fields) in enumerate(scopes.items()):
        entries.append(
            Entry(
                f"scope{i}",
                f"0 template fields, {label}",
                audited_with(0)(f),
                context=functools.partial(obs.scope, **fields) if fields else nullcontext,
                **common,
            )
        )
    return entries
