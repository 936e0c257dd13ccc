"""Scope, Actor and Resource: the frozen values that say who did what, where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from obs_sdk.exceptions import ConfigurationError

__all__ = ["ACTOR_TYPES", "Actor", "Resource", "Scope"]

ACTOR_TYPES = ("user", "service", "system", "anonymous")


def _require_text(kind: str, field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"Actor.{kind}() needs a non-empty string {field}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: build one with ``Actor.user/service/system/anonymous``. Immutable, thread-safe.

    ``id`` is None for system and anonymous actors: obs_sdk never makes one up.
    ``distinct_id`` is the anonymous visitor's analytics id (PostHog cookie), if known.
    """

    type: str
    id: str | None = None
    name: str | None = None
    email: str | None = None
    distinct_id: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ACTOR_TYPES:
            raise ConfigurationError(
                f"Actor({self.type!r}) is not an actor kind: build one with Actor.user(id), "
                "Actor.service(id), Actor.system(label) or Actor.anonymous()"
            )
        if self.type in ("user", "service"):
            _require_text(self.type, "id", self.id)

    @classmethod
    def user(cls, id: str, name: str | None = None, email: str | None = None) -> Actor:
        """A signed-in person: ``actor_type`` "user", ``actor_id`` = *id*."""
        return cls("user", _require_text("user", "id", id), name, email)

    @classmethod
    def service(cls, id: str, name: str | None = None) -> Actor:
        """A machine identity such as an API key or a service account."""
        return cls("service", _require_text("service", "id", id), name)

    @classmethod
    def system(cls, label: str) -> Actor:
        """The system itself (a cron job, a webhook): no id, *label* as the name."""
        return cls("system", None, _require_text("system", "label", label))

    @classmethod
    def anonymous(cls, distinct_id: str | None = None) -> Actor:
        """A visitor who has not signed in; *distinct_id* is their analytics id, if any."""
        return cls("anonymous", None, None, None, distinct_id or None)


ANONYMOUS = Actor("anonymous")


@dataclass(frozen=True, slots=True)
class Resource:
    """What was acted on. In a decorator, ``id`` and ``name`` may be templates or callables."""

    type: Any
    id: Any = None
    name: Any = None


@dataclass(frozen=True, slots=True)
class Scope:
    """The merged scope in effect: read it with ``current_scope()``. Immutable."""

    actor: Actor | None = None
    workspace: str | None = None
    organization: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    session: Any = None

    def merged(self, inner: Scope) -> Scope:
        """Return this scope overlaid by *inner*: inner values win.

        Workspace and organization are one unit: an inner scope that sets either replaces
        both, so a personal workspace never inherits an organization.
        """
        if inner.workspace is not None or inner.organization is not None:
            workspace, organization = inner.workspace, inner.organization
        else:
            workspace, organization = self.workspace, self.organization
        return Scope(
            actor=inner.actor if inner.actor is not None else self.actor,
            workspace=workspace,
            organization=organization,
            ip=inner.ip if inner.ip is not None else self.ip,
            user_agent=inner.user_agent if inner.user_agent is not None else self.user_agent,
            request_id=inner.request_id if inner.request_id is not None else self.request_id,
            session=inner.session if inner.session is not None else self.session,
        )


EMPTY_SCOPE = Scope()
