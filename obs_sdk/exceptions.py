"""Exceptions obs_sdk raises.

::

    Exception
    └── ObsError
        ├── QuotaExceeded            a storage charge would pass the owner's quota
        ├── AuditWriteError          record_audit_now could not write its record
        ├── ConfigurationError       (also a ValueError) a configure/decoration-time mistake
        └── MissingDependencyError   (also an ImportError) an optional extra is not installed

At call time only the domain outcomes reach the caller: ``QuotaExceeded``, a metering or
idempotency write that failed (raised as the database's own error, part of the caller's
transaction) and ``AuditWriteError``. Every other instrumentation failure is logged and counted.
"""

from __future__ import annotations

__all__ = [
    "AuditWriteError",
    "ConfigurationError",
    "MissingDependencyError",
    "ObsError",
    "QuotaExceeded",
]


class ObsError(Exception):
    """Base class of every exception obs_sdk raises on purpose."""


class ConfigurationError(ObsError, ValueError):
    """A mistake in ``configure()`` or in a decorator's arguments; the message says what to fix."""


class AuditWriteError(ObsError):
    """``record_audit_now`` could not commit its record; the caller decides what to do."""


class MissingDependencyError(ObsError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, *, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed, and obs_sdk needs it here; "
            f"install it with: pip install 'obs-sdk[{extra}]'",
            name=package,
        )
        self.package = package
        self.extra = extra


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":  # noqa: PLR2004  (binary units)
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class QuotaExceeded(ObsError):
    """A storage charge would take *owner* past its quota; nothing was charged.

    Attributes:
        owner: whose quota it is.
        used: bytes charged to the owner before this charge.
        limit: the quota in bytes.
        requested: the growth this charge asked for, in bytes.
    """

    def __init__(self, *, owner: str, used: int, limit: int, requested: int) -> None:
        super().__init__(
            f"storage quota exceeded for {owner!r}: {_human_bytes(used)} used of "
            f"{_human_bytes(limit)}, {_human_bytes(requested)} more requested"
        )
        self.owner = owner
        self.used = used
        self.limit = limit
        self.requested = requested

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__: rebuild from attributes so the error pickles across processes.
        return (_rebuild_quota, (self.owner, self.used, self.limit, self.requested))


def _rebuild_quota(owner: str, used: int, limit: int, requested: int) -> QuotaExceeded:
    return QuotaExceeded(owner=owner, used=used, limit=limit, requested=requested)
