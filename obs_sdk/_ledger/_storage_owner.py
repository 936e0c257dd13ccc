"""Whom metered_storage() charges, under which quota: from the arguments, scope and config.

Checked when the block is entered, so a wrong owner or quota fails before any statement.
"""

from __future__ import annotations

from obs_sdk import _config
from obs_sdk._scope._context import current_scope
from obs_sdk._scope._values import Actor
from obs_sdk.exceptions import ConfigurationError

__all__ = ["check_bytes", "owner_text", "resolve_owner", "resolve_quota"]


def check_bytes(value: object, where: str) -> int:
    """Return *value*, a size in bytes; raise ConfigurationError naming *where* otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where} takes an int >= 0 (a size in bytes), got {value!r}")
    return value


def owner_text(owner: object, where: str) -> str:
    """Return the owner's id: an ``Actor``'s id, or a non-empty string as it is."""
    if isinstance(owner, Actor):
        if owner.id is None:
            raise ConfigurationError(f"{where}: a {owner.type} actor has no id to own storage")
        return owner.id
    if not isinstance(owner, str) or not owner:
        raise ConfigurationError(f"{where} takes a non-empty string owner, got {owner!r}")
    return owner


def resolve_owner(explicit: object) -> str:
    """Return *explicit*, else the scope's organization, else its actor's id."""
    if explicit is not None:
        return owner_text(explicit, "metered_storage(owner=...)")
    s = current_scope()
    if s.organization:
        return s.organization
    if s.actor is not None and s.actor.id:
        return s.actor.id
    raise ConfigurationError(
        "metered_storage() cannot tell whom to charge: open obs.scope(organization=...) or "
        "obs.scope(actor=obs.Actor.user(id)), or pass owner=..."
    )


def resolve_quota(explicit: int | None, owner: str) -> int | None:
    """Return *explicit*, else ``configure(storage_quota=...)`` for *owner*; None: unlimited."""
    if explicit is not None:
        return check_bytes(explicit, "metered_storage(quota=...)")
    configured = _config.current().storage_quota
    if callable(configured):
        configured = configured(owner)
        if configured is None:
            return None
        return check_bytes(configured, f"the storage_quota callable, for owner {owner!r},")
    return configured
