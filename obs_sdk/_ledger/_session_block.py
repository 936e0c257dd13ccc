"""SessionBlock: ``with`` and ``async with`` around statements in the caller's Session.

``once()`` and ``metered_storage()`` write in the caller's transaction, on a ``Session`` or an
``AsyncSession``. Each writes its statements once, for a sync ``Session``; this base is the
two thin shells around them, after SQLAlchemy's own ``AsyncSession`` (a shell over
``Session``): ``with`` calls the steps on the Session, and ``async with`` on an AsyncSession
runs the same steps through ``run_sync`` (in SQLAlchemy's greenlet, on the task's
connection). So the sync and async paths cannot drift apart. What a block does to the
context (its scope frame, its records) runs outside ``run_sync``, on the caller's thread or
task.

A block's steps, in order (``_before``, ``_end`` optional):

- ``_before()``: checks before any statement, e.g. the scope's owner.
- ``_begin(session)``: the statements at entry; what it returns goes to ``_enter``.
- ``_enter(session, begun)``: the context at entry; what ``as`` binds.
- ``_end(session, failed)``: the statements at exit, or None when there are none.
- ``_exit(succeeded)``: the context at exit; *succeeded*: no exception, ``_end`` included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from obs_sdk.exceptions import ConfigurationError

__all__ = ["SessionBlock"]

B = TypeVar("B")  # what the statements at entry found (once(): whether the key is new)
T = TypeVar("T")  # what ``as`` binds


class SessionBlock(Generic[B, T]):
    """Base of a ``with`` / ``async with`` block around statements in the caller's Session."""

    __slots__ = ()

    _session: Any  # a Session, or an AsyncSession (anything with ``run_sync``)
    _end: Callable[[Session, bool], None] | None = None

    def _before(self) -> None:
        """Check, before any statement, what the block needs (nothing by default)."""

    def _begin(self, session: Session) -> B:
        raise NotImplementedError

    def _enter(self, session: Session, begun: B) -> T:
        raise NotImplementedError

    def _exit(self, succeeded: bool) -> None:
        raise NotImplementedError

    def _needs_async_with(self) -> ConfigurationError:
        """The error for plain ``with`` on an AsyncSession, saying to use ``async with``."""
        raise NotImplementedError

    def __enter__(self) -> T:
        session = self._session
        if hasattr(session, "run_sync"):
            raise self._needs_async_with()
        self._before()
        return self._enter(session, self._begin(session))

    async def __aenter__(self) -> T:
        session = self._session
        if not hasattr(session, "run_sync"):
            return self.__enter__()  # a sync Session: nothing to await
        self._before()
        begun = await session.run_sync(self._begin)
        return self._enter(session.sync_session, begun)

    def __exit__(self, *exc_info: object) -> None:
        failed = exc_info[1] is not None
        try:
            if self._end is not None:
                self._end(self._session, failed)
        except BaseException:
            self._exit(succeeded=False)
            raise
        self._exit(succeeded=not failed)

    async def __aexit__(self, *exc_info: object) -> None:
        session = self._session
        if self._end is None or not hasattr(session, "run_sync"):
            return self.__exit__(*exc_info)  # no statements at exit, or a sync Session
        failed = exc_info[1] is not None
        try:
            await session.run_sync(self._end, failed)
        except BaseException:
            self._exit(succeeded=False)
            raise
        self._exit(succeeded=not failed)
