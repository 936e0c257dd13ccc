"""The one door from the CLI to the trail's functions in obs_sdk.

The commands call the library's public functions (``obs.audit_log``, ``obs.seal``,
``obs.verify``...) through here, looked up when called: a function this obs_sdk does not
have yet is a ``NotAvailable`` error naming it, never a stand-in implementation.
Imports no click or rich.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import obs_sdk

__all__ = ["NotAvailable", "function", "newest_first", "oldest_first"]


class NotAvailable(obs_sdk.ObsError):
    """The installed obs_sdk has no such function: upgrade obs-sdk."""


# Functions the commands need that SPEC does not make public: where they live.
_HOMES = {"write_bundle": "obs_sdk._seals._proof", "verify_bundle": "obs_sdk._seals._proof"}


def function(name: str) -> Callable[..., Any]:
    """Return the obs_sdk function *name*, or raise ``NotAvailable`` saying what to do."""
    module: Any = obs_sdk
    if name in _HOMES:
        try:
            module = importlib.import_module(_HOMES[name])
        except ImportError:
            module = None
    found = getattr(module, name, None)
    if not callable(found):
        raise NotAvailable(
            f"this obs_sdk ({getattr(obs_sdk, '__version__', 'unknown version')}) has no "
            f"{name}(); upgrade it: pip install --upgrade 'obs-sdk[cli]'"
        )
    return found  # type: ignore[no-any-return]


def _accepts(func: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def oldest_first(bind: Any, filters: dict[str, Any], *, after: str | None, limit: int) -> list[Any]:
    """One page of ``obs.audit_log`` in id order, after the record id *after*."""
    audit_log = function("audit_log")
    extra = {"order": "asc"} if _accepts(audit_log, "order") else {}
    return list(audit_log(bind, **filters, limit=limit, after=after, **extra))


def newest_first(bind: Any, filters: dict[str, Any], *, after: str | None, limit: int) -> list[Any]:
    """One page of ``obs.audit_log(order="desc")``: the newest records, after record *after*."""
    audit_log = function("audit_log")
    if not _accepts(audit_log, "order"):
        raise NotAvailable(
            "this obs_sdk's audit_log has no order='desc' (newest first); upgrade it: "
            "pip install --upgrade 'obs-sdk[cli]'"
        )
    return list(audit_log(bind, **filters, limit=limit, after=after, order="desc"))
