"""once(): placeholder until issue 6 lands (being written now)."""

from __future__ import annotations

from typing import Any

__all__ = ["once", "purge_idempotency_keys"]


def once(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def purge_idempotency_keys(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
