"""SyncBlock: ``async with`` for a block whose entry and exit never wait.

The scope's context managers only attach and detach OpenTelemetry context: nothing in them
awaits, so ``async with`` runs the very ``with`` code, and a manager writes ``__enter__``
and ``__exit__`` once. (A block that runs SQL at entry or exit awaits it: the ledger's
``SessionBlock``.)
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["SyncBlock"]

T = TypeVar("T")  # what ``as`` binds


class SyncBlock(Generic[T]):
    """Base of a context manager usable with ``with`` and ``async with`` alike."""

    __slots__ = ()

    def __enter__(self) -> T:
        raise NotImplementedError

    def __exit__(self, *exc_info: object) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> T:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)
