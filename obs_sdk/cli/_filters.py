"""The filters of ``audit_log`` as command options, and the times they take."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["filter_options", "filters_of", "parse_time"]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGO = re.compile(r"^(\d+)([smhdw])$")


def parse_time(text: str, *, now: datetime.datetime | None = None) -> datetime.datetime:
    """Return the aware UTC time *text* names: ISO 8601 (naive is UTC) or an age like ``7d``.

    Raises:
        ValueError: neither form; the message says which forms are accepted.
    """
    ago = _AGO.match(text.strip())
    if ago:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return now - datetime.timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        parsed = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-12-06, 2026-12-06T10:00:00Z) "
            "or an age such as 30m, 12h, 7d, 2w"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


class _Time(click.ParamType):  # type: ignore[type-arg]
    name = "TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime.datetime:
        if isinstance(value, datetime.datetime):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = _Time()


def filter_options(func: F) -> F:
    """Add the filters of ``obs.audit_log`` to a command."""
    options = [
        click.option("--organization", "-o", help="Only this organization's records."),
        click.option("--workspace", "-w", help="Only this workspace's records."),
        click.option("--actor", "actor_id", metavar="ACTOR_ID", help="Only this actor's."),
        click.option(
            "--resource",
            metavar="TYPE[:ID]",
            help="Only records on this resource type, or on one resource (file:f_1).",
        ),
        click.option("--action", help="Only this action (e.g. file.downloaded)."),
        click.option("--since", type=TIME, help="From this time (ISO 8601 or an age: 7d)."),
        click.option("--until", type=TIME, help="Before this time (ISO 8601 or an age)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def filters_of(params: dict[str, Any]) -> dict[str, Any]:
    """Return the ``audit_log`` keyword arguments among a command's *params*."""
    resource = params.get("resource")
    return {
        "organization": params.get("organization"),
        "workspace": params.get("workspace"),
        "actor_id": params.get("actor_id"),
        "resource": tuple(resource.split(":", 1))
        if resource and ":" in resource
        else ((resource, None) if resource else None),
        "action": params.get("action"),
        "since": params.get("since"),
        "until": params.get("until"),
    }
