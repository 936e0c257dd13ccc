"""Records: the raw tuple the hot path builds, and the rendered AuditRecord / AnalyticsEvent.

The hot path appends a small tuple of plain values; ids, timestamps, text formatting,
redaction and JSON happen here, on the dispatcher thread or at commit.
"""

from __future__ import annotations

import datetime
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from opentelemetry import trace

from obs_sdk._delivery._redact import Redactor
from obs_sdk._delivery._sanitize import bound_mapping, safe_text, size_of, size_within
from obs_sdk._guard import count, count_error, warn_once
from obs_sdk._hotpath._plain import optional_text
from obs_sdk._hotpath._rendering import Renderer
from obs_sdk._hotpath._resolving import Resolver
from obs_sdk._hotpath._templates import Plan
from obs_sdk._ledger._tables import tables
from obs_sdk._scope._values import ANONYMOUS, Actor
from obs_sdk.exceptions import ConfigurationError

__all__ = [
    "AUDIT",
    "EVENT",
    "AnalyticsEvent",
    "AuditRecord",
    "Instrumentation",
    "RenderSettings",
    "approx_bytes",
    "raw_size",
    "render",
    "rendered_bound",
]

AUDIT = "audit"
EVENT = "event"
GROUP = "group"  # identify_group(): a $groupidentify message
# An audit record its own transaction already stored (at commit, or record_audit_now): it is
# queued as (STORED, AuditRecord) so the other sinks (OTel logs) and stats() see it too.
STORED_AUDIT = "stored_audit"
STORED = object()

SUCCESS, FAILURE, STARTED = "success", "failure", "started"

# The plan slots of organization= / workspace= (decorators, record_audit, track).
TENANT = ("workspace", "organization")

# Layout of the raw record tuple (a tuple: the cheapest thing to build on the hot path).
# CONTEXT is the OTel context of the call (its span's ids are read at render), or None.
SPEC, OUTCOME, TIME_NS, FIELDS, CONTEXT, VALUES, ERROR_TYPE, IDEMPOTENCY = range(8)
# A ninth item, only in the records of calls made with changes=: what the call wrote (see
# _changes). Every other record keeps eight items: the hot path builds no more than before.
CHANGES = 8
RawRecord = tuple[Any, ...]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0a8f38-1a7e-4c55-9d1c-0b5f0c3d7e21")


class Instrumentation:
    """What one decorator (or one ``record_audit``/``track`` call) records. Immutable in use."""

    __slots__ = (
        "allow_anonymous",
        "allow_system",
        "changes",
        "emit_if",
        "kind",
        "name",
        "plain",
        "plan",
        "rendering",
        "resolving",
        "tenant",
        "when",
    )

    def __init__(
        self,
        kind: str,
        name: str,
        plan: Plan,
        when: str = "success",
        emit_if: Callable[[Any], Any] | None = None,
        allow_anonymous: bool = False,
        allow_system: bool = False,
        changes: bool | frozenset[str] = False,
    ) -> None:
        self.kind = kind
        self.name = name
        self.plan = plan  # decided at decoration; the stages below read it, per call and render
        self.resolving = Resolver(plan)
        self.rendering = Renderer(plan)
        self.when = when
        self.emit_if = emit_if
        self.allow_anonymous = allow_anonymous
        self.allow_system = allow_system
        # False, True (every mapped class) or the mapped class names to report (_changes).
        self.changes = changes
        # An audit with nothing to resolve and no predicate: the hot path skips straight on.
        self.plain = kind == AUDIT and emit_if is None and not plan.resolvers
        # organization= / workspace= given: rendered with the record, they win over the scope.
        self.tenant = any(name in plan.slots for name in TENANT)


_UNKNOWN_SAFETY = uuid.SafeUUID.unknown  # an enum member: each lookup runs a descriptor


class _Uuid7:
    """Time-ordered UUIDv7 ids, monotonic within this process (RFC 9562, method 3).

    48 bits of milliseconds, a 12-bit sequence that counts within one millisecond (so ids
    made in the same millisecond keep their order), then 62 random bits.

    The random bits come from a private generator seeded from the operating system
    (``os.urandom``) and reseeded in a forked child, never from the ``random`` module:
    processes that call ``random.seed(same)`` (tests, simulations, workers) would make the
    same ids, and an insert that skips a taken id would lose a record (issue 14). Its
    ``getrandbits`` costs what the module's does; a syscall per id would cost 3 µs.
    """

    __slots__ = ("_bits", "_lock", "_next", "_random")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The high 64 bits (milliseconds, version, sequence) the next id of the same
        # millisecond takes; one int to read and bump under the lock.
        self._next = 0
        self._random = random.Random()  # seeded from os.urandom
        self._bits = self._random.getrandbits
        # A fork while the worker holds the lock would leave it held in the child forever;
        # a child that kept the parent's generator state would repeat the parent's ids.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._random.seed()  # from os.urandom, in place: _bits stays bound to it

    def __call__(self, time_ns: int) -> uuid.UUID:
        # What UUID(int=...) ends with, minus its range checks (the value is 128 bits by
        # construction), through UUID's slot descriptors: half the cost of an id.
        made = _new(uuid.UUID)
        _set_int(made, self.value(time_ns))
        _set_safety(made, _UNKNOWN_SAFETY)
        return made

    def hex(self, time_ns: int) -> str:
        """The id as 32 hex digits (``UUID.hex``), without making the UUID."""
        return f"{self.value(time_ns):032x}"

    def value(self, time_ns: int) -> int:
        """The next id's 128-bit value."""
        # ms << 16 | version 7 << 12 | a 12-bit sequence: comparing these 64 bits orders ids
        # by millisecond, then by sequence.
        start = ((time_ns // 1_000_000) & 0xFFFF_FFFF_FFFF) << 16 | 0x7000
        bits = self._bits
        lock = self._lock
        lock.acquire()  # not `with`: a third of the cost, and nothing in between can raise
        high = self._next
        if start > high:  # a new millisecond: start the sequence low, with room to count
            high = start | bits(10)
        elif high & 0xFFF == 0:  # the sequence of this millisecond ran out: borrow the next
            high = (high >> 16 << 16) + 0x1_7000
        self._next = high + 1
        lock.release()
        return high << 64 | _VARIANT | bits(62)

    def replacing(self, taken: uuid.UUID) -> uuid.UUID:
        """A new id for a record whose id *taken* was found in use (a collision).

        A UUIDv7 keeps its millisecond and sequence (its place in time order) with new
        random bits; any other id (from a configured ``id_factory``) is replaced by a
        UUIDv7 of now.
        """
        if taken.version == _VERSION and taken.variant == uuid.RFC_4122:
            return uuid.UUID(int=taken.int >> 64 << 64 | _VARIANT | self._bits(62))
        return self(time.time_ns())


_new = object.__new__
_set_int = uuid.UUID.__dict__["int"].__set__
_set_safety = uuid.UUID.__dict__["is_safe"].__set__
_VARIANT = 0b10 << 62
_VERSION = 7


uuid7 = _Uuid7()


class IdCollision(Exception):
    """A record's id was found taken: it was written under a new one (counted, logged)."""

    def __init__(self, taken: Any, replacement: Any) -> None:
        super().__init__(
            f"audit record id {taken} was already in the table (ids collided); "
            f"the record was written under the new id {replacement}"
        )


def add_tenant(plan: Plan, workspace: Any, organization: Any) -> None:
    """Compile a decorator's ``workspace=`` / ``organization=`` into their plan slots.

    The same rules as resource fields: a template over the arguments and result, a
    constant, or a callable taking the call. Neither given: no slot, the scope decides.
    """
    for name, spec in zip(TENANT, (workspace, organization), strict=True):
        if spec is not None:
            plan.add(name, spec)


def add_plain_tenant(
    plan: Plan, where: str, workspace: str | None, organization: str | None
) -> None:
    """Set ``record_audit``/``track``'s plain ``workspace=`` / ``organization=`` values."""
    for name, value in zip(TENANT, (workspace, organization), strict=True):
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{where}: {name}= takes a string or None, got {value!r}")
        if value:
            plan.slots[name] = ("const", value)


# The calendar fields of the last second converted: records come in bursts within a second,
# and the datetime constructor costs half of `_EPOCH + timedelta(...)`. One tuple, swapped
# whole, so threads never see half an update.
_last_second = (0, (1970, 1, 1, 0, 0, 0))


def to_datetime(time_ns: int) -> datetime.datetime:
    """Turn nanoseconds since the epoch into an aware UTC datetime (microsecond precision)."""
    global _last_second
    seconds, micros = divmod(time_ns // 1000, 1_000_000)
    known, fields = _last_second
    if seconds != known:
        moment = _EPOCH + datetime.timedelta(seconds=seconds)
        fields = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
        _last_second = (seconds, fields)
    year, month, day, hour, minute, second = fields
    return datetime.datetime(year, month, day, hour, minute, second, micros, datetime.timezone.utc)


class RenderSettings(Protocol):
    """**Protocol:** what rendering reads from the configuration (``_config.Config``)."""

    @property
    def service(self) -> str | None: ...
    @property
    def redactor(self) -> Redactor: ...
    @property
    def redact(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None: ...
    @property
    def max_metadata_bytes(self) -> int: ...
    @property
    def max_changes_bytes(self) -> int: ...
    @property
    def id_factory(self) -> Callable[[int], uuid.UUID]: ...
    @property
    def person_properties(self) -> bool: ...
    @property
    def require_actor(self) -> bool: ...


DEFAULT_MAX_METADATA_BYTES = 8192
DEFAULT_MAX_CHANGES_BYTES = 65536


class _Unconfigured:
    """What rendering reads until ``_config`` (imported with the package) sets its Config."""

    service = None
    redactor = Redactor()
    redact = None
    max_metadata_bytes = DEFAULT_MAX_METADATA_BYTES
    max_changes_bytes = DEFAULT_MAX_CHANGES_BYTES
    id_factory = uuid7
    person_properties = False
    require_actor = False


# The one configuration object (``_config.Config``): configure() points this at the one it
# built, shutdown() at the defaults. Read once per record, so a record never mixes two.
config: RenderSettings = _Unconfigured()

# Set by _changes_render when imported: renders a call's changes (redacted, bounded) and says
# whether a value was sanitized. Kept there so that this module needs none of its imports.
render_changes: Callable[[Any, RenderSettings], tuple[Any, bool]] | None = None

# Widths of the audit table's text columns (None: unbounded), by column position; and the
# positions of the columns whose values come from callers (the others are obs_sdk's own).
_WIDTHS = tuple(getattr(column.type, "length", None) for column in tables().audit.columns)
_CALLER_TEXT = (2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 20)
_CHECKED = tuple((i, _WIDTHS[i]) for i in _CALLER_TEXT)
(
    _W_ACTION,
    _W_ACTOR_ID,
    _W_ACTOR_NAME,
    _W_ACTOR_EMAIL,
    _W_RESOURCE_TYPE,
    _W_RESOURCE_ID,
    _W_TENANT,
    _W_SERVICE,
    _W_ERROR_TYPE,
) = (_WIDTHS[i] for i in (2, 5, 6, 7, 8, 9, 11, 18, 20))
_W_SCOPE = tuple(_WIDTHS[i] for i in (11, 12, 13, 14, 15))  # workspace .. request_id
_ROW_BYTES = 448  # a rendered audit row without its metadata and unbounded text columns
_EVENT_BYTES = 640  # an AnalyticsEvent without its properties
_RAW_BYTES = 200  # a raw record without its values (what records of a call site share)
_TEXT_BYTES = 4096  # a rendered record's width-limited text columns, at most


def raw_size(raw: RawRecord, budget: int) -> int:
    """Roughly the bytes a raw record holds of its own, counted no further than *budget*.

    Its resolved template values, and the metadata mapping of a ``record_audit`` /
    ``track`` call (a constant of its own plan). Lengths, not serialization: cheap for
    any size.
    """
    size = _RAW_BYTES
    for value in raw[VALUES]:
        kind = type(value)
        if kind is str:
            size += 49 + len(value)
        elif kind is int or kind is float or kind is bool or value is None:
            size += 16
        else:
            size += size_within(value, budget)
    if len(raw) > CHANGES:
        size += size_within(raw[CHANGES], budget)
    plan = raw[SPEC].plan
    if plan.whole is not None:
        slot = plan.slots.get(plan.whole)
        if slot is not None and slot[0] == "const":
            size += size_within(slot[1], budget)
    return size


def rendered_bound() -> int:
    """About the most a rendered record holds (its metadata is cut to max_metadata_bytes)."""
    return _ROW_BYTES + _TEXT_BYTES + 2 * (config.max_metadata_bytes + config.max_changes_bytes)


class AuditRecord(NamedTuple):
    """One row of the audit log, its fields in the table's column order. Immutable.

    A named tuple rather than a dataclass: the dispatcher builds one per record and the SQL
    sink turns it into the driver's row by slicing, which a dataclass made a third of the
    drain. ``metadata`` is a dict; ``changes`` a list of the rows the call wrote, or None
    (a call made without ``changes=``; see docs/changes.md).
    """

    id: uuid.UUID
    occurred_at: datetime.datetime
    action: str
    outcome: str
    actor_type: str
    actor_id: str | None
    actor_name: str | None
    actor_email: str | None
    resource_type: str | None
    resource_id: str | None
    resource_name: str | None
    workspace_id: str | None
    organization_id: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    trace_id: str | None
    span_id: str | None
    service: str | None
    metadata: dict[str, Any]
    error_type: str | None
    changes: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a dict keyed by column name."""
        return dict(zip(self._fields, self, strict=True))


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    """One analytics message for PostHog: a capture, or a group identify (``kind="group"``)."""

    uuid: uuid.UUID
    event: str
    distinct_id: str | None
    properties: dict[str, Any]
    groups: dict[str, str]
    timestamp: datetime.datetime
    outcome: str = SUCCESS
    kind: str = EVENT
    trace_id: str | None = None
    span_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the event as a dict keyed by field name."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _slot(renderer: Renderer, name: str, values: tuple[Any, ...]) -> Any:
    try:
        return renderer.render(name, values)
    except Exception as exc:  # e.g. a format spec that does not fit the value
        count_error("render", exc, f"{renderer.plan.owner}: field {name}")
        return None


def _rendered(
    spec: Instrumentation, texts: tuple[str, ...], mapping: str, values: tuple[Any, ...]
) -> Any:
    """The text slots *texts* and the *mapping* (not yet cleaned) of one record."""
    renderer = spec.rendering
    if not _per_call(spec.plan, mapping):
        try:
            return renderer.compiled(texts, mapping)(values)
        except Exception:  # slot by slot: only a failing slot is lost (and counted)
            pass
    try:
        data = renderer.render_mapping(mapping, values)
    except Exception as exc:
        count_error("render", exc, f"{spec.plan.owner}: field {mapping}")
        data = {}
    return (*(optional_text(_slot(renderer, name, values)) for name in texts), data)


def _per_call(plan: Plan, mapping: str) -> bool:
    """A plan made for one call (``record_audit``, ``track``: its mapping is a constant).

    Compiling its renderer would cost more than rendering it once slot by slot, and the
    compiled function (its globals hold the mapping) would keep the call's metadata alive
    in a reference cycle until the next garbage collection.
    """
    if plan.whole != mapping:
        return False
    slot = plan.slots.get(mapping)
    return slot is not None and slot[0] == "const"


def _clean(data: dict[str, Any], c: RenderSettings) -> tuple[dict[str, Any], bool]:
    """Bounded, sanitized, redacted: (the mapping to send, whether a value was sanitized).

    Bounding comes first so that redaction and JSON work on at most a few times
    ``max_metadata_bytes``, however large the caller's value (see _sanitize).
    """
    limit = c.max_metadata_bytes
    bounded, how = bound_mapping(data, limit)
    cleaned = c.redactor.clean(bounded, limit)
    sanitized = how is not None and how.sanitized
    if c.redact is not None:  # the app's hook may hand back anything: sanitize its output
        cleaned, again = bound_mapping(cleaned, limit)
        sanitized = sanitized or (again is not None and again.sanitized)
    return cleaned, sanitized


def _properties(raw: RawRecord, c: RenderSettings) -> tuple[dict[str, Any], bool]:
    """An analytics record's properties, bounded, sanitized and redacted."""
    return _clean(_rendered(raw[SPEC], (), "properties", raw[VALUES])[0], c)


_RESOURCE = ("resource.type", "resource.id", "resource.name")
_RESOURCE_TENANT = (*_RESOURCE, *TENANT)


def _tenant(
    given_workspace: str | None,
    given_organization: str | None,
    workspace: str | None,
    organization: str | None,
) -> tuple[str | None, str | None]:
    """The record's (workspace, organization): the call's pair wins over the scope's.

    As with nested scopes (``Scope.merged``), the pair is one unit: a call that gives
    either replaces both, the one it does not give being None. A pair that rendered to
    None (or "") leaves the scope's.
    """
    if not given_workspace and not given_organization:
        return workspace, organization
    return given_workspace or None, given_organization or None


def _no_actor(spec: Instrumentation) -> None:
    """Count a record filed with no actor in scope; warn once per action if required."""
    count("no_actor")
    if config.require_actor:
        what = "audit action" if spec.kind == AUDIT else "analytics event"
        warn_once(
            ("require_actor", spec.kind, spec.name),
            "obs_sdk: %s %r was recorded with no actor in scope (filed anonymous); open "
            "obs.scope(actor=...) or call obs.set_actor() first, or pass "
            "configure(require_actor=False). Further records of it are counted in "
            "obs.stats()['no_actor'] and not logged.",
            what,
            spec.name,
        )


def _trace_hex(context: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """The trace and span ids of the span active in the call's OTel context, if any.

    Read here rather than on the caller's thread: a context is immutable, and so is the
    identity of the span it holds.
    """
    if context is None:
        return None, None
    try:
        # OTel's INVALID_SPAN when none: its span context is not valid.
        span = trace.get_current_span(context)  # type: ignore[arg-type]  # an OTel Context
        sc = span.get_span_context()
        if not sc.is_valid:
            return None, None
        return format(sc.trace_id, "032x"), format(sc.span_id, "016x")
    except Exception as exc:  # a span object of an unusual tracer: the record goes on without
        count_error("trace", exc)
        return None, None


_new_record = tuple.__new__  # AuditRecord's own __new__ minus its keyword handling


def render_audit(raw: RawRecord) -> AuditRecord:
    """Build the AuditRecord for a raw record (dispatcher thread or commit)."""
    time_ns = raw[TIME_NS]
    columns = audit_columns(raw, config.id_factory(time_ns), to_datetime(time_ns))
    return _new_record(AuditRecord, columns)


def audit_columns(raw: RawRecord, record_id: Any, occurred_at: Any) -> tuple[Any, ...]:
    """The audit row's values in column order, with the id and time as the caller made them.

    ``render_audit`` passes a UUID and an aware datetime; a SQL sink that is the only one
    taking audits passes the forms its driver stores, and skips making the objects. Values
    a database would refuse are sanitized (counted ``sanitized``): see _sanitize.
    """
    c = config
    spec: Instrumentation = raw[SPEC]
    actor, workspace, organization, ip, user_agent, request_id = raw[FIELDS]
    if actor is None:
        _no_actor(spec)
        actor = ANONYMOUS
    trace_id, span_id = _trace_hex(raw[CONTEXT])
    if spec.tenant:
        (
            resource_type,
            resource_id,
            resource_name,
            given_workspace,
            given_organization,
            metadata,
        ) = _rendered(spec, _RESOURCE_TENANT, "metadata", raw[VALUES])
        workspace, organization = _tenant(
            given_workspace, given_organization, workspace, organization
        )
    else:
        resource_type, resource_id, resource_name, metadata = _rendered(
            spec, _RESOURCE, "metadata", raw[VALUES]
        )
    metadata, sanitized = _clean(metadata, c)
    changes = raw[CHANGES] if len(raw) > CHANGES else None
    if changes is not None:  # only _changes makes them; it imports the renderer
        changes, cut = render_changes(changes, c)  # type: ignore[misc]
        sanitized = sanitized or cut
    columns: tuple[Any, ...] = (
        record_id,
        occurred_at,
        spec.name,
        raw[OUTCOME],
        actor.type,
        actor.id,
        actor.name,
        actor.email,
        resource_type,
        resource_id,
        resource_name,
        workspace,
        organization,
        ip,
        user_agent,
        request_id,
        trace_id,
        span_id,
        c.service,
        metadata,
        raw[ERROR_TYPE],
        changes,
    )
    if not (
        _plain_scope(raw[FIELDS], spec.name, c.service)
        and _plain(resource_type, _W_RESOURCE_TYPE)
        and _plain(resource_id, _W_RESOURCE_ID)
        and _plain(resource_name, None)
        and _plain(raw[ERROR_TYPE], _W_ERROR_TYPE)
        and (not spec.tenant or (_plain(workspace, _W_TENANT) and _plain(organization, _W_TENANT)))
    ):
        for i, width in _CHECKED:
            value = columns[i]
            if value is not None:
                fixed = safe_text(value if type(value) is str else str(value), width)
                if fixed != value:
                    columns = (*columns[:i], fixed, *columns[i + 1 :])
                    sanitized = True
    if sanitized:
        count("sanitized")
    return columns


def _plain(value: Any, width: int | None) -> bool:
    """Whether a text column's *value* is stored as it is on every database."""
    if value is None:
        return True
    if type(value) is not str:
        return False
    return (width is None or len(value) <= width) and value.isascii() and "\x00" not in value


# Whether a scope's fields (with the action and the service) are stored as they are. Keyed by
# the fields tuple's identity: every record made in one scope shares that tuple (the value
# keeps the tuple alive, so its id cannot be reused while cached).
_plain_scopes: dict[int, tuple[tuple[Any, ...], str, str | None, bool]] = {}
_MAX_PLAIN_SCOPES = 4096


def _plain_scope(fields: tuple[Any, ...], action: str, service: str | None) -> bool:
    hit = _plain_scopes.get(id(fields))
    if hit is not None and hit[0] is fields and hit[1] is action and hit[2] is service:
        return hit[3]
    actor = fields[0] or ANONYMOUS
    plain = (
        _plain(action, _W_ACTION)
        and _plain(service, _W_SERVICE)
        and _plain(actor.id, _W_ACTOR_ID)
        and _plain(actor.name, _W_ACTOR_NAME)
        and _plain(actor.email, _W_ACTOR_EMAIL)
        and all(_plain(v, w) for v, w in zip(fields[1:], _W_SCOPE, strict=True))
    )
    if len(_plain_scopes) >= _MAX_PLAIN_SCOPES:
        _plain_scopes.clear()
    _plain_scopes[id(fields)] = (fields, action, service, plain)
    return plain


def approx_bytes(record: Any) -> int:
    """Roughly the memory a rendered record holds (queue budgets; cheap, not exact).

    Takes an AuditRecord, the SQL sink's row (the same columns, metadata as JSON text) or an
    AnalyticsEvent.
    """
    if isinstance(record, tuple):
        metadata, changes = record[19], record[21]
        size = _ROW_BYTES + (len(metadata) if type(metadata) is str else size_of(metadata))
        if changes is not None:
            size += len(changes) if type(changes) is str else size_of(changes)
        name, agent = record[10], record[14]
        if name:
            size += len(name)
        if agent:
            size += len(agent)
        return size
    return _EVENT_BYTES + size_of(record.properties)


def analytics_identity(spec: Instrumentation, actor: Actor | None) -> tuple[bool, str | None]:
    """Decide whether an event is sent and under which distinct_id (SPEC: never invent one)."""
    actor = actor or ANONYMOUS
    if actor.type in ("user", "service"):
        return True, actor.id
    if actor.type == "system":
        return spec.allow_system, f"system:{actor.name}"
    return spec.allow_anonymous, actor.distinct_id


def render_event(raw: RawRecord) -> AnalyticsEvent:
    """Build the AnalyticsEvent for a raw record (dispatcher thread or commit)."""
    spec: Instrumentation = raw[SPEC]
    actor, workspace, organization = raw[FIELDS][:3]
    if actor is None:
        if spec.kind != GROUP:  # an event sent (allow_anonymous) with nobody in scope
            _no_actor(spec)
        actor = ANONYMOUS
    _, distinct_id = analytics_identity(spec, actor)
    c = config
    if spec.kind == GROUP:
        properties, sanitized = _properties(raw, c)
        if sanitized:
            count("sanitized")
        return AnalyticsEvent(
            uuid=c.id_factory(raw[TIME_NS]),
            event="$groupidentify",
            distinct_id=None,
            properties={k: v for k, v in properties.items() if v is not None and v != ""},
            groups={raw[VALUES][0]: raw[VALUES][1]},
            timestamp=to_datetime(raw[TIME_NS]),
            kind=GROUP,
        )
    if spec.tenant:
        given_workspace, given_organization, properties = _rendered(
            spec, TENANT, "properties", raw[VALUES]
        )
        workspace, organization = _tenant(
            given_workspace, given_organization, workspace, organization
        )
        properties, sanitized = _clean(properties, c)
    else:
        properties, sanitized = _properties(raw, c)
    if sanitized:
        count("sanitized")
    properties = {k: v for k, v in properties.items() if v is not None and v != ""}
    if actor.type not in ("user", "service"):
        properties["$process_person_profile"] = False
    elif c.person_properties:
        person = {"name": actor.name, "email": actor.email}
        person = {k: v for k, v in person.items() if v}
        if person:
            properties["$set"] = person
    groups = {}
    if workspace:
        groups["workspace"] = workspace
    if organization:
        groups["organization"] = organization
    idempotency = raw[IDEMPOTENCY]
    if idempotency is not None:
        key, n = idempotency
        # A failure event sent from an attempt that rolled back must not share the uuid of
        # the retry's success event (PostHog would keep one of them): the outcome is mixed in.
        suffix = "" if raw[OUTCOME] == SUCCESS else f"\x00{raw[OUTCOME]}"
        event_uuid = uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{key}\x00{spec.name}\x00{n}{suffix}")
    else:
        event_uuid = c.id_factory(raw[TIME_NS])
    trace_id, span_id = _trace_hex(raw[CONTEXT])
    return AnalyticsEvent(
        uuid=event_uuid,
        event=spec.name,
        distinct_id=distinct_id,
        properties=properties,
        groups=groups,
        timestamp=to_datetime(raw[TIME_NS]),
        outcome=raw[OUTCOME],
        trace_id=trace_id,
        span_id=span_id,
    )


def render(raw: RawRecord) -> AuditRecord | AnalyticsEvent:
    """Render a raw record of either kind."""
    if raw[SPEC].kind == AUDIT:
        return render_audit(raw)
    return render_event(raw)
