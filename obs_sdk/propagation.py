"""Scope propagation across processes: placeholder until issue 9 lands (being written now)."""

from __future__ import annotations

from typing import Any

__all__ = ["extract", "inject"]


def inject(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def extract(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
