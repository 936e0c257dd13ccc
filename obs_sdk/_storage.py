"""metered_storage(): placeholder until issue 5 lands (being written now)."""

from __future__ import annotations

from typing import Any

__all__ = ["StorageDrift", "metered_storage", "reconcile_storage", "storage_usage"]


class StorageDrift:
    """Placeholder."""


def metered_storage(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def storage_usage(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def reconcile_storage(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
