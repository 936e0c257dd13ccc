"""metered_storage(): charge stored bytes (or give them back) around a block, under a quota.

This module is the block the caller writes: its arguments, whom to charge (the scope), the
scope frame that makes the body's records join the session's transaction, and the
``audit_storage`` records. The charge or release itself is ``_storage_change``; reading
and reconciling the counters is ``_storage_usage``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.orm import Session

from obs_sdk import _config
from obs_sdk._ledger._session_block import SessionBlock
from obs_sdk._ledger._storage_change import StorageChange
from obs_sdk._ledger._storage_owner import check_bytes, resolve_owner, resolve_quota
from obs_sdk._scope._context import frame_with, in_repeated_key
from obs_sdk._scope._values import Actor, Resource
from obs_sdk.exceptions import ConfigurationError

__all__ = ["metered_storage"]


class _Meter(SessionBlock[None, None]):
    """One charge or release around a block (``with`` / ``async with``); single use."""

    def __init__(
        self,
        session: Any,
        object_id: str,
        nbytes: int | None,
        owner: str | Actor | None,
        quota: int | None,
        release: bool,
    ) -> None:
        if not isinstance(object_id, str) or not object_id:
            raise ConfigurationError(
                f"metered_storage(object_id=...) takes a non-empty string, got {object_id!r}"
            )
        if release:
            if nbytes is not None or quota is not None or owner is not None:
                raise ConfigurationError(
                    "metered_storage(release=True) takes only object_id: the bytes and owner "
                    "to give back are the ones recorded in the ledger"
                )
        else:
            nbytes = check_bytes(nbytes, "metered_storage(bytes=...)")
            if quota is not None:
                check_bytes(quota, "metered_storage(quota=...)")
        self._session = session
        self._object_id = object_id
        self._bytes = nbytes or 0
        self._explicit_owner = owner
        self._explicit_quota = quota
        self._release = release
        self._active = False
        self._change: StorageChange | None = None  # None inside a repeated once() key
        self._frame: AbstractContextManager[Any] | None = None

    def _needs_async_with(self) -> ConfigurationError:
        return ConfigurationError(
            "metered_storage() got an AsyncSession: use `async with obs.metered_storage(...)`"
        )

    def _before(self) -> None:
        if self._active:
            raise ConfigurationError("a metered_storage(...) block cannot be entered twice")
        self._change = None
        if in_repeated_key():
            # The key's first delivery made this charge. suppressed() is no reason to skip:
            # it silences records, and metering is accounting (a quota bypass otherwise).
            return
        owner, quota = "", None  # a release reads its owner from the ledger
        if not self._release:
            owner = resolve_owner(self._explicit_owner)
            quota = resolve_quota(self._explicit_quota, owner)
        self._change = StorageChange(self._object_id, self._bytes, owner, quota, self._release)

    def _begin(self, session: Session) -> None:
        if self._change is not None:
            self._change.start(session)

    def _enter(self, session: Session, begun: None) -> None:
        if self._change is not None:
            # Records made in the body (and ours) join the session's transaction.
            self._frame = frame_with(session=session)
            self._frame.__enter__()
            self._active = True

    def _end(self, session: Session, failed: bool) -> None:
        if self._change is not None:
            self._change.finish(session, failed)

    def _exit(self, succeeded: bool) -> None:
        metadata = self._change.metadata if succeeded and self._change is not None else None
        self._change = None
        try:
            if metadata is not None and _config.current().audit_storage:
                self._record(metadata)
        finally:
            self._active = False
            frame, self._frame = self._frame, None
            if frame is not None:
                frame.__exit__(None, None, None)

    def _record(self, metadata: dict[str, Any]) -> None:
        from obs_sdk._hotpath._analytics import track
        from obs_sdk._hotpath._audit import record_audit

        verb = "released" if self._release else "charged"
        resource = Resource("storage_object", self._object_id)
        record_audit(f"storage.{verb}", resource=resource, metadata=metadata)
        # The owner's usage after the change, for analytics: a tracked event (held to the
        # commit like the audit record), grouped by the scope's workspace/organization.
        properties = {"object_id": self._object_id, **metadata}
        track(f"storage_{verb}", properties=properties)


def metered_storage(
    session: Any,
    *,
    object_id: str,
    bytes: int | None = None,
    owner: str | Actor | None = None,
    quota: int | None = None,
    release: bool = False,
) -> _Meter:
    """Charge stored bytes (or give them back) around a block, in *session*'s transaction.

    A charge runs before the block: one conditional statement checks ``used + growth <=
    quota`` (equality allowed; an owner's first charge included) and raises
    ``QuotaExceeded`` without running the block when it does not fit; the ledger records the
    object's size. Re-charging an object charges only its growth (a re-charge that does not
    grow always succeeds) and charging it under another owner moves it. The owner is
    *owner*, else the scope's organization, else the actor's id. The quota is *quota*, else
    ``configure(storage_quota=...)``, else unlimited.

    A release deletes the object's ledger row and subtracts what was charged for it from the
    owner recorded there, never below zero; an object never charged or already released
    changes nothing, so a retried or concurrent duplicate delete cannot double-decrement.

    If the block raises, its charge or release is undone (a savepoint), even when the caller
    swallows the error and commits; a rollback undoes everything. Inside the block the
    session is in scope, so audit records join its transaction. Inside ``obs.suppressed()``
    the charge and the quota check run all the same (only the ``audit_storage`` records are
    silenced); inside a repeated ``once()`` key nothing is metered, since the key's first
    delivery made the charge.

    Use ``with`` for a ``Session`` and ``async with`` for an ``AsyncSession``. Concurrent
    charges from threads or processes are race-free on SQLite and PostgreSQL; one object is
    for one block on one thread or task.

    Raises:
        QuotaExceeded: the charge does not fit the owner's quota; nothing was charged.
        ConfigurationError: a bad argument, or no owner could be resolved.
        sqlalchemy.exc.SQLAlchemyError: the metering SQL failed. It is accounting, part of
            the caller's transaction, so it is never swallowed.
    """
    return _Meter(session, object_id, bytes, owner, quota, release)
