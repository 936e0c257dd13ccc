"""The scope in OpenTelemetry context: scope(), current_scope(), set_actor(), suppressed().

This is the only module that imports ``opentelemetry.context``. The scope lives under a
private context key, not in baggage: baggage rides along in outgoing headers, and the
actor and tenant ids must not leak to third parties.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context

from obs_sdk._hotpath._runtime import runtime  # the scope provider configure() set
from obs_sdk._scope._sync_block import SyncBlock
from obs_sdk._scope._values import EMPTY_SCOPE, Actor, Scope
from obs_sdk._vendor_private import SUPPRESS_INSTRUMENTATION_KEY, fast_context_getter
from obs_sdk.exceptions import ConfigurationError

__all__ = [
    "SCOPE_KEY",
    "SUPPRESS_KEY",
    "Frame",
    "current_context",
    "current_frame",
    "current_scope",
    "scope",
    "set_actor",
    "suppressed",
    "with_scope",
]

P = ParamSpec("P")
R = TypeVar("R")

SCOPE_KEY = otel_context.create_key("obs_sdk.scope")
# Set only together with a suppressed frame (see _Suppressed): the hot path takes a context
# without a frame as not suppressed.
SUPPRESS_KEY = otel_context.create_key("obs_sdk.suppressed")
# opentelemetry.context.get_current(), one call deep where OTel's runtime allows (see there).
current_context = fast_context_getter()

# Set by obs_sdk._ledger._tx: called with the session when a scope opens a unit of work on it, and
# with the session and the unit when that scope exits (it closes the unit, see Unit).
on_unit_open: Callable[[Any], None] | None = None
on_unit_close: Callable[[Any, Unit], None] | None = None

_FIELDS = ("actor", "workspace", "organization", "ip", "user_agent", "request_id")


class Unit:
    """The unit of work a ``scope(session=...)`` opened: shared by the frames derived from it.

    Child tasks and threads see the scope's frame (or a copy made by their ``set_actor``);
    ``closed`` tells their records that the scope has ended, and ``transaction`` which of
    the session's transactions was in progress then (None: none), the only one they may
    still join.
    """

    __slots__ = ("closed", "transaction")

    def __init__(self) -> None:
        self.closed = False
        self.transaction: object = None


class Frame:
    """What one ``scope()`` put into context: the merged scope plus what records read.

    Immutable in use: ``set_actor`` puts a copy with the new actor into the current context,
    so a child task or thread changes its own actor and never its parent's or siblings'.
    ``manager`` and ``token`` say which ``scope()`` attached it and how to restore the
    context it replaced; copies keep both, so the scope's exit also drops them.
    """

    __slots__ = (
        "events_plain",
        "fields",
        "idempotency",
        "manager",
        "parent",
        "plain",
        "repeated",
        "scope",
        "session",
        "suppressed",
        "thread",
        "token",
        "unit",
    )

    def __init__(
        self,
        merged: Scope,
        idempotency: Any = None,
        suppressed: bool = False,
        parent: Frame | None = None,
    ) -> None:
        self.scope = merged
        self.idempotency = idempotency
        # Kept on the frame too, so the hot path learns both from one context lookup.
        self.suppressed = suppressed
        self.repeated = False  # inside a repeated once() key (see repeated_key())
        self.session = merged.session
        self.parent = parent
        self.thread = threading.get_ident()  # where it was opened (see set_actor)
        self.manager: object = None
        self.token: object = None
        if merged.session is None:
            self.unit: Unit | None = None
        elif parent is not None and parent.session is merged.session and parent.unit is not None:
            self.unit = parent.unit  # an inner frame of the same unit of work
        else:
            self.unit = Unit()
            _open_unit(merged.session)
        # No session, no idempotency key, not suppressed: records go straight to the queue.
        self.plain = merged.session is None and idempotency is None and not suppressed
        self.fields = _fields_of(merged)
        # ...and analytics too, when a user or service acts (others need their opt-ins).
        self.events_plain = self.plain and _identified(merged.actor)

    def with_actor(self, actor: Actor | None) -> Frame:
        """Return a copy of this frame whose scope has *actor*."""
        copy = Frame.__new__(Frame)
        for name in Frame.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.scope = replace(self.scope, actor=actor)
        copy.fields = _fields_of(copy.scope)
        copy.events_plain = copy.plain and _identified(actor)
        return copy


def _identified(actor: Actor | None) -> bool:
    """A user or service: analytics go out under its id without any opt-in."""
    return actor is not None and actor.type in ("user", "service")


def _fields_of(s: Scope) -> tuple[Any, ...]:
    return (s.actor, s.workspace, s.organization, s.ip, s.user_agent, s.request_id)


def current_frame() -> Frame | None:
    """Return the innermost frame, or None outside every scope."""
    return current_context().get(SCOPE_KEY)  # type: ignore[return-value]


def provided_fields(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    """Fill the fields no scope set from the configured scope provider (caller's thread)."""
    provider = runtime.provider
    assert provider is not None
    extra = provider() or {}
    actor, workspace, organization, ip, user_agent, request_id = fields
    if workspace is None and organization is None:
        workspace, organization = extra.get("workspace"), extra.get("organization")
    provided_actor = extra.get("actor")
    if provided_actor is not None and not isinstance(provided_actor, Actor):
        raise TypeError(f"scope_provider returned actor={provided_actor!r}; return an obs.Actor")
    return (
        actor if actor is not None else provided_actor,
        workspace,
        organization,
        ip if ip is not None else extra.get("ip"),
        user_agent if user_agent is not None else extra.get("user_agent"),
        request_id if request_id is not None else extra.get("request_id"),
    )


def current_scope() -> Scope:
    """Return the scope in effect here, with provider fields filled in. Thread- and task-safe."""
    frame = current_frame()
    merged = frame.scope if frame is not None else EMPTY_SCOPE
    if runtime.provider is None:
        return merged
    from obs_sdk._guard import guard

    with guard("scope_provider"):
        actor, ws, org, ip, ua, rid = provided_fields(_fields_of(merged))
        return replace(
            merged,
            actor=actor,
            workspace=ws,
            organization=org,
            ip=ip,
            user_agent=ua,
            request_id=rid,
        )
    return merged


class _ScopeManager(SyncBlock[Scope]):
    """Context manager returned by ``scope()``; usable with ``with`` and ``async with``.

    It keeps no state of its own between enter and exit: the token that restores the
    context lives on the frame it attached, so one manager may be entered in several tasks
    or threads at once, each exit restoring its own context.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: Scope) -> None:
        self._inner = inner

    def __enter__(self) -> Scope:
        ctx = otel_context.get_current()
        parent: Frame | None = ctx.get(SCOPE_KEY)  # type: ignore[assignment]
        if parent is None:
            frame = Frame(EMPTY_SCOPE.merged(self._inner))
        else:
            merged = parent.scope.merged(self._inner)
            frame = Frame(merged, parent.idempotency, parent.suppressed, parent)
            frame.repeated = parent.repeated
        _attach(self, frame, otel_context.set_value(SCOPE_KEY, frame, ctx))
        return frame.scope

    def __exit__(self, *exc_info: object) -> None:
        frame = _detach(self)
        if frame is not None:
            _close_unit(frame)


def _open_unit(session: Any) -> None:
    if on_unit_open is not None:
        from obs_sdk._guard import guard

        with guard("scope_enter"):
            on_unit_open(session)


def _close_unit(frame: Frame) -> None:
    """At the exit of the frame that opened a unit of work: children's records are late now."""
    unit = frame.unit
    if unit is None or (frame.parent is not None and frame.parent.unit is unit):
        return  # no session, or an inner frame of its parent's unit
    if on_unit_close is None:
        unit.closed = True
        return
    from obs_sdk._guard import guard

    with guard("scope_exit"):
        on_unit_close(frame.session, unit)
    unit.closed = True  # also when the hook failed


def _attach(manager: object, frame: Frame, ctx: otel_context.Context) -> None:
    """Make *ctx* (holding *frame*) current; the frame keeps the token that undoes it."""
    frame.manager = manager
    frame.token = otel_context.attach(ctx)


def _detach(manager: object) -> Frame | None:
    """Restore the context from before *manager*'s frame in this context; return that frame.

    Frames that ``set_actor`` put above it go with it. None (and a one-time warning) when
    this context never entered *manager*: a framework ran the exit in another context.
    """
    frame = current_frame()
    while frame is not None and frame.manager is not manager:
        frame = frame.parent
    if frame is None or not _restore(frame.token):
        _warn_foreign_exit()
        return None
    return frame


def _restore(token: object) -> bool:
    """Restore the context *token* replaced; False when this is not the context it came from."""
    if isinstance(token, contextvars.Token):
        # OTel's default runtime hands out the ContextVar's own token: reset it here, where a
        # token of another context is a plain ValueError rather than OTel's logged traceback.
        try:
            token.var.reset(token)
        except ValueError:
            return False
        return True
    otel_context.detach(token)  # type: ignore[arg-type]  # another runtime: its own rules
    return True


def _warn_foreign_exit() -> None:
    from obs_sdk._guard import warn_once

    warn_once(
        "scope-exit",
        "obs_sdk: a scope was exited in another context than the one it was entered in, so it "
        "never applied to the code between the two (typical of a sync generator dependency "
        "that a framework runs on worker threads, such as FastAPI's `def` dependencies with "
        "`yield`). Open the scope where the work runs: in the middleware, in an `async def` "
        "dependency, or around the work itself. Records made meanwhile went to the queue "
        "without the scope's session.",
    )


def _optional_text(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise ConfigurationError(f"scope({name}=...) takes a string or None, got {value!r}")


def scope(
    *,
    actor: Actor | None = None,
    workspace: str | None = None,
    organization: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    session: Any = None,
) -> _ScopeManager:
    """Open a scope for the block: records made inside carry these values.

    Nested scopes merge and inner values win, except that workspace and organization are
    one unit: an inner scope that sets either replaces both. The previous scope is
    restored exactly on exit, also when the block raises. The scope follows ``await``,
    stays isolated between asyncio tasks, and reaches threads through ``with_scope`` or
    ``contextvars.copy_context()``.

    *session* (a SQLAlchemy ``Session`` or ``AsyncSession``) makes success records join its
    transaction: those made here, and in the child tasks and threads that carry the scope
    (``asyncio.gather``, ``with_scope`` on a pool), until that transaction ends. obs_sdk
    never begins, flushes, expires or refreshes the session: it inserts the records at its
    commit (docs/transactions.md).
    """
    if actor is not None and not isinstance(actor, Actor):
        raise ConfigurationError(
            f"scope(actor=...) takes an obs.Actor (Actor.user(id), ...), got {actor!r}"
        )
    inner = Scope(
        actor=actor,
        workspace=_optional_text("workspace", workspace),
        organization=_optional_text("organization", organization),
        ip=_optional_text("ip", ip),
        user_agent=_optional_text("user_agent", user_agent),
        request_id=_optional_text("request_id", request_id),
        session=getattr(session, "sync_session", session),
    )
    return _ScopeManager(inner)


def set_actor(actor: Actor | None) -> None:
    """Replace the actor of the current scope, e.g. right after authentication.

    Every record made after this call in the current task or thread carries *actor*, and so
    do the tasks and threads it starts afterwards; never its parent's or its siblings'. The
    scope's exit ends it. Called on another thread than the one that opened the scope (a
    framework's worker thread) it applies there only, and warns once. Outside any scope
    there is nothing to change: it warns once and counts ``set_actor_outside_scope``.
    """
    from obs_sdk._guard import count, warn_once

    if actor is not None and not isinstance(actor, Actor):
        raise ConfigurationError(f"set_actor() takes an obs.Actor or None, got {actor!r}")
    frame = current_frame()
    if frame is None:
        count("set_actor_outside_scope")
        warn_once(
            "set_actor-outside",
            "obs_sdk: set_actor() was called outside any scope, so it set nothing (an actor "
            "set there would stick to a pooled thread and leak into unrelated work). Open "
            "obs.scope(...) first, e.g. in your request middleware, or pass actor= to it.",
        )
        return
    if frame.thread != threading.get_ident():
        warn_once(
            "set_actor-thread",
            "obs_sdk: set_actor() was called on another thread than the one that opened the "
            "scope (a framework's worker thread, e.g. a FastAPI `def` dependency): the actor "
            "applies to that thread's work only, not to the rest of the request. Resolve the "
            "actor where the scope is opened (the middleware's actor resolver) or in an "
            "`async def` dependency.",
        )
    otel_context.attach(otel_context.set_value(SCOPE_KEY, frame.with_actor(actor)))


@contextmanager
def frame_with(**changes: Any) -> Iterator[Frame]:
    """Open an internal frame: the current scope with *changes* (session, idempotency)."""
    ctx = otel_context.get_current()
    parent: Frame | None = ctx.get(SCOPE_KEY)  # type: ignore[assignment]
    base = parent.scope if parent is not None else EMPTY_SCOPE
    idempotency = changes.pop("idempotency", parent.idempotency if parent else None)
    suppressed = parent.suppressed if parent is not None else False
    frame = Frame(replace(base, **changes), idempotency, suppressed, parent)
    frame.repeated = parent is not None and parent.repeated
    token = otel_context.attach(otel_context.set_value(SCOPE_KEY, frame, ctx))
    try:
        yield frame
    finally:
        otel_context.detach(token)
        _close_unit(frame)


class _Suppressed(SyncBlock[None]):
    __slots__ = ("_repeated",)

    def __init__(self, repeated: bool = False) -> None:
        self._repeated = repeated

    def __enter__(self) -> None:
        parent: Frame | None = otel_context.get_value(SCOPE_KEY)  # type: ignore[assignment]
        scope_ = parent.scope if parent is not None else EMPTY_SCOPE
        idempotency = parent.idempotency if parent is not None else None
        frame = Frame(scope_, idempotency, True, parent)
        frame.repeated = self._repeated or (parent is not None and parent.repeated)
        ctx = otel_context.set_value(SCOPE_KEY, frame)
        ctx = otel_context.set_value(SUPPRESS_KEY, True, ctx)
        # Also OTel's own key, so a sink's HTTP or DB calls are not traced by instrumentations.
        ctx = otel_context.set_value(SUPPRESS_INSTRUMENTATION_KEY, True, ctx)
        _attach(self, frame, ctx)

    def __exit__(self, *exc_info: object) -> None:
        _detach(self)


def suppressed() -> _Suppressed:
    """Record no audit or analytics record inside the block (nor OTel instrumentation).

    Metering is accounting, not a record: ``metered_storage`` charges and checks the quota
    inside it all the same. Task-local.
    """
    return _Suppressed()


def repeated_key() -> _Suppressed:
    """The block of a repeated ``once()`` key: no records, and no metering either.

    The first delivery of the key already made them; ``in_repeated_key()`` is True inside.
    """
    return _Suppressed(repeated=True)


def in_repeated_key() -> bool:
    """Return True inside the block of a repeated ``once()`` key (metering skips it)."""
    frame = current_frame()
    return frame is not None and frame.repeated


def with_scope(fn: Callable[P, R]) -> Callable[P, R]:
    """Bind *fn* to the caller's scope (and OTel context) for a later call or another thread.

    Works for plain and ``async`` functions. The captured context is attached for the call
    and detached after it, so the thread's own context is untouched.
    """
    captured = otel_context.get_current()

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            token = otel_context.attach(captured)
            try:
                return await fn(*args, **kwargs)
            finally:
                otel_context.detach(token)

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = otel_context.attach(captured)
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return run
