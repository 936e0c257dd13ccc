"""The console view: every audit record and analytics event, one readable line on stderr.

``configure(console=True)`` (or ``OBS_SDK_CONSOLE=1``) adds this sink. It is a sink like
the others, with its own queue and worker thread, so a slow or blocked terminal delays no
database write and no PostHog capture: its queue fills and its records are dropped and
counted (``stats()["by_sink"]["console"]``). It prints records as they are delivered, so
a transaction's records appear once it committed, and never when it rolled back.

A line::

    14:03:07.123 audit file.downloaded success user:u_1 Ada org=org_1 file:f_1 {bytes=2048}

time (local, like the logging module's), kind, action or event, outcome, actor, tenant,
resource, then metadata or properties, each value cut short. Fields the line does not name
(a column added later) follow as ``name=value``, so a new field never breaks it. Coloured
with rich when it is installed (the ``console`` extra), plain text otherwise; rich is
imported by ``configure()``, never by ``import obs_sdk``.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from obs_sdk._hotpath._records import (
    AUDIT,
    EVENT,
    FAILURE,
    GROUP,
    STORED_AUDIT,
    SUCCESS,
    AnalyticsEvent,
)

__all__ = ["ConsoleSink"]

MAX_VALUE_CHARS = 40  # one value, shown
MAX_MAPPING_CHARS = 160  # metadata or properties, shown

# Fields the line shows in its own places, or leaves out on purpose (ids, trace ids and
# request details belong to the stored record, not to a line read while developing).
_AUDIT_SHOWN = frozenset({
    "id", "occurred_at", "action", "outcome", "actor_type", "actor_id", "actor_name",
    "actor_email", "resource_type", "resource_id", "resource_name", "workspace_id",
    "organization_id", "ip", "user_agent", "request_id", "trace_id", "span_id", "service",
    "metadata", "error_type",
})  # fmt: skip
_EVENT_SHOWN = frozenset({
    "uuid", "event", "distinct_id", "properties", "groups", "timestamp", "outcome", "kind",
    "trace_id", "span_id",
})  # fmt: skip

# rich styles of the line's parts (plain text ignores them).
_STYLES = {
    "time": "dim",
    AUDIT: "bold blue",
    EVENT: "bold magenta",
    GROUP: "bold magenta",
    "name": "bold",
    SUCCESS: "green",
    FAILURE: "bold red",
    "started": "yellow",
    "actor": "cyan",
    "tenant": "magenta",
    "resource": "yellow",
    "data": "dim",
}

Part = tuple[str, str]  # (text, style name)


def _short(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """*value* as short, one-line text: a plain word as it is, anything else as its repr."""
    if isinstance(value, str):
        text = value if value and value.isprintable() and " " not in value else repr(value)
    elif isinstance(value, Mapping):
        text = "{" + _pairs(value.items(), limit) + "}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pairs(items: Iterable[tuple[Any, Any]], limit: int) -> str:
    """``key=value`` pairs joined by spaces, cut at about *limit* characters."""
    out: list[str] = []
    used = 0
    items = list(items)
    for i, (key, value) in enumerate(items):
        pair = f"{_short(str(key))}={_short(value)}"
        if used + len(pair) > limit and out:
            out.append(f"…(+{len(items) - i})")
            break
        out.append(pair)
        used += len(pair) + 1
    return " ".join(out)


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _outcome(outcome: str, error_type: str | None) -> Part:
    return (f"{outcome}({error_type})" if error_type else outcome, outcome)


def _named(kind: str, id_: Any, name: Any) -> str:
    text = f"{kind}:{_short(id_)}" if id_ is not None else kind
    return f"{text} {_short(name)}" if name else text


def _tenant(organization: Any, workspace: Any) -> Iterator[Part]:
    if organization:
        yield f"org={_short(organization)}", "tenant"
    if workspace:
        yield f"ws={_short(workspace)}", "tenant"


def _extras(record: Any, shown: frozenset[str]) -> Iterator[Part]:
    """Fields this view does not know (added since), as ``name=value``."""
    names: Iterable[str] = getattr(record, "_fields", ()) or getattr(
        record, "__dataclass_fields__", ()
    )
    for name in names:
        if name not in shown:
            value = getattr(record, name, None)
            if value not in (None, "", {}, []):
                yield f"{name}={_short(value, MAX_MAPPING_CHARS)}", "data"


def _audit_parts(r: Any) -> Iterator[Part]:
    yield _time(r.occurred_at), "time"
    yield "audit", AUDIT
    yield _short(r.action, 200), "name"
    yield _outcome(r.outcome, r.error_type)
    yield _named(r.actor_type, r.actor_id, r.actor_name), "actor"
    yield from _tenant(r.organization_id, r.workspace_id)
    if r.resource_type or r.resource_id:
        yield _named(r.resource_type or "?", r.resource_id, r.resource_name), "resource"
    if r.metadata:
        yield "{" + _pairs(r.metadata.items(), MAX_MAPPING_CHARS) + "}", "data"
    yield from _extras(r, _AUDIT_SHOWN)


def _event_parts(e: AnalyticsEvent) -> Iterator[Part]:
    yield _time(e.timestamp), "time"
    yield e.kind, e.kind
    yield _short(e.event, 200), "name"
    if e.kind == GROUP:
        ((group_type, group_key),) = e.groups.items()
        yield f"{group_type}={_short(group_key)}", "tenant"
    else:
        yield _outcome(e.outcome, None)
        yield _short(e.distinct_id) if e.distinct_id else "anonymous", "actor"
        yield from _tenant(e.groups.get("organization"), e.groups.get("workspace"))
    properties = {k: v for k, v in e.properties.items() if not k.startswith("$")}
    if properties:
        yield "{" + _pairs(properties.items(), MAX_MAPPING_CHARS) + "}", "data"
    yield from _extras(e, _EVENT_SHOWN)


def parts(record: Any) -> list[Part]:
    """The line of one record, as (text, style) parts."""
    if isinstance(record, AnalyticsEvent):
        return list(_event_parts(record))
    return list(_audit_parts(record))


def line(record: Any) -> str:
    """The plain-text line of one record (no newline)."""
    return " ".join(text for text, _ in parts(record))


class ConsoleSink:
    """Print each record and event it is given as one line on stderr (rich, else plain).

    *unsent_events*: no other sink sends analytics events (no PostHog client, no OTel
    logs), so each event printed here went nowhere else: it is counted as unsent.
    Called only from its own worker thread.
    """

    name = "console"
    kinds = frozenset({AUDIT, STORED_AUDIT, EVENT, GROUP})

    def __init__(self, *, unsent_events: bool = False) -> None:
        self._unsent_events = unsent_events
        self._rich: Any = None
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:  # the console extra is not installed: plain text
            return
        # sys.stderr is looked up at each print (Console(stderr=True)), as for plain text.
        # soft_wrap: a long line stays one line; no markup or highlighting of user values.
        self._rich = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
        self._text = Text

    def export(self, batch: Sequence[Any], /) -> None:
        """Print one line per record, the whole batch in one write."""
        if self._unsent_events:
            from obs_sdk._hotpath._analytics import NO_CLIENT, not_sent

            for record in batch:
                if isinstance(record, AnalyticsEvent):
                    not_sent(record.event, NO_CLIENT)
        console = self._rich
        if console is None:
            sys.stderr.write("".join(line(record) + "\n" for record in batch))
            sys.stderr.flush()
            return
        with console:  # one buffered write for the batch
            for record in batch:
                text = self._text()
                for i, (chunk, style) in enumerate(parts(record)):
                    text.append(" " if i else "")
                    text.append(chunk, style=_STYLES.get(style, ""))
                console.print(text)

    def is_transient(self, error: Exception, /) -> bool:
        """Say no: a terminal that refuses a write will refuse the retry too."""
        return False

    def flush(self, timeout: float, /) -> None:
        """Flush stderr."""
        sys.stderr.flush()

    def shutdown(self, timeout: float, /) -> None:
        """Flush stderr; it is not ours to close."""
        self.flush(timeout)

    def after_fork(self) -> None:
        """Do nothing: stderr is the child's too."""
        return None
