"""@tracked, track and identify_group: product analytics sent to PostHog off the caller's thread."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from obs_sdk._guard import count, warn_once
from obs_sdk._hotpath._emit import emit
from obs_sdk._hotpath._plain import Call, freeze
from obs_sdk._hotpath._records import (
    EVENT,
    GROUP,
    SUCCESS,
    Instrumentation,
    add_plain_tenant,
    add_tenant,
)
from obs_sdk._hotpath._resolving import ARGS
from obs_sdk._hotpath._templates import Plan
from obs_sdk._hotpath._wrapping import When, build_plan, defined_at, instrument, params_of
from obs_sdk.exceptions import ConfigurationError

__all__ = ["NO_ACTOR", "NO_CLIENT", "identify_group", "not_sent", "track", "tracked"]

P = ParamSpec("P")
R = TypeVar("R")

GROUP_KINDS = ("workspace", "organization")

# Why an analytics event was not sent (not_sent()), and what to do about it.
NO_CLIENT = (
    "obs_sdk: analytics event %r was not sent: no PostHog client is configured. Pass "
    "configure(posthog=posthog.Posthog(project_api_key, host=...)) to send analytics events "
    "(or otel_logs= to mirror them as OpenTelemetry logs). Each one is counted in "
    "obs.stats()['unsent_events']; this is said once."
)
NO_ACTOR = (
    "obs_sdk: analytics event %r was not sent: no actor in scope (track() or a @tracked "
    "function called outside obs.scope(actor=...), or before obs.set_actor()). Open a scope "
    "with an actor, or pass allow_anonymous=True to send it anonymously. Each one is counted "
    "in obs.stats()['unsent_events']; this is said once."
)


def not_sent(event: str, why: str) -> None:
    """Count an analytics event that was not sent (``unsent_events``); say *why* once."""
    count("unsent_events")
    warn_once(("unsent_events", why), why, event)


def _check_event(event: object, where: str) -> str:
    if not isinstance(event, str) or not event.strip():
        raise ConfigurationError(f"{where} needs an event name such as 'file_downloaded'")
    return event


def tracked(
    event: str,
    *,
    properties: Mapping[str, Any] | Callable[[Call], Mapping[str, Any]] | None = None,
    when: When = "success",
    allow_anonymous: bool = False,
    allow_system: bool = False,
    emit_if: Callable[[Call], bool] | None = None,
    organization: str | Callable[[Call], Any] | None = None,
    workspace: str | Callable[[Call], Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Send a PostHog event for each call of the decorated function.

    ``distinct_id`` is the scope's actor id; ``$groups`` carries the scope's workspace and
    organization. Anonymous and system actors send nothing unless ``allow_anonymous`` /
    ``allow_system`` is set (then with ``$process_person_profile: false``). ``properties``
    and ``when`` work like ``@audited``'s metadata and when. ``organization`` /
    ``workspace`` work like ``@audited``'s: templates over the call that, when either is
    given, replace the scope's pair in ``$groups`` as one unit. Inside a transaction the
    event waits for the commit and is dropped on rollback. The capture happens on the
    dispatcher thread; the caller never pays for building the PostHog message. Thread-safe.
    """
    _check_event(event, "@tracked(...)")
    if emit_if is not None and not callable(emit_if):
        raise ConfigurationError(f"@tracked({event!r}): emit_if= takes a callable or None")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        params = params_of(func, "@tracked")
        owner = f"@tracked({event!r}) on {defined_at(func, params.qualname)}"
        plan = build_plan(owner, params, when)
        plan.add_mapping("properties", properties)
        add_tenant(plan, workspace, organization)
        spec = Instrumentation(
            EVENT,
            event,
            plan,
            when=when,
            emit_if=emit_if,
            allow_anonymous=allow_anonymous,
            allow_system=allow_system,
        )
        return instrument(func, spec)  # type: ignore[no-any-return]

    return decorate


def track(
    event: str,
    *,
    properties: Mapping[str, Any] | None = None,
    allow_anonymous: bool = False,
    allow_system: bool = False,
    organization: str | None = None,
    workspace: str | None = None,
) -> None:
    """Send one analytics event by hand; it follows the scope like ``@tracked`` does.

    ``organization`` / ``workspace`` (strings) replace the scope's pair in ``$groups`` as
    one unit, as in ``@tracked``.
    """
    _check_event(event, "track(...)")
    if properties is not None and not isinstance(properties, Mapping):
        raise ConfigurationError(f"track({event!r}): properties= takes a dict")
    plan = Plan(f"track({event!r})", None, "success")
    plan.whole = "properties"
    plan.slots["properties"] = ("const", freeze(dict(properties or {})))
    add_plain_tenant(plan, f"track({event!r})", workspace, organization)
    spec = Instrumentation(
        EVENT, event, plan, allow_anonymous=allow_anonymous, allow_system=allow_system
    )
    emit(spec, SUCCESS, (), {}, None, None)


def identify_group(kind: str, id: str, properties: Mapping[str, Any] | None = None) -> None:
    """Set properties on a PostHog group (``kind`` "workspace" or "organization").

    Sent from the dispatcher thread like events, under no person (``$groupidentify``).
    """
    if kind not in GROUP_KINDS:
        raise ConfigurationError(
            f"identify_group(kind={kind!r}): use 'workspace' or 'organization'"
        )
    if not isinstance(id, str) or not id:
        raise ConfigurationError("identify_group() needs a non-empty string id")
    plan = Plan(f"identify_group({kind!r})", None, "success")
    plan.whole = "properties"
    plan.slots["properties"] = ("const", freeze(dict(properties or {})))
    plan.resolvers = []
    spec = Instrumentation(GROUP, "$groupidentify", plan, allow_anonymous=True, allow_system=True)
    _emit_group(spec, kind, id)


def _emit_group(spec: Instrumentation, kind: str, group_id: str) -> None:
    # The group's kind and id travel as the record's resolved values.
    spec.plan.resolvers = [(ARGS, lambda a, k, r: kind), (ARGS, lambda a, k, r: group_id)]
    emit(spec, SUCCESS, (), {}, None, None)
