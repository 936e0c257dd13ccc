"""The settings the caller's thread reads on each call: one object, updated by configure().

Three values of the configuration are read per call, where an attribute of a long-lived
object costs what a module global does: the clock records are stamped with, whether any
sink takes analytics events, and the scope provider. ``runtime`` is that object; it is
never replaced, so generated code is given it once, explicitly (``_o_rt`` in the lane's
namespace), and ``emit()`` and the scope read it by name. ``configure()`` sets all three in
one call (``Runtime.apply``), from its ``Config``. It imports nothing of obs_sdk, so the
scope can read the provider here without depending on the rest of the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import time_ns
from typing import Any

__all__ = ["Runtime", "runtime"]


class Runtime:
    """``clock``, ``events_wanted`` and ``provider``, as the last configure() set them."""

    __slots__ = ("clock", "events_wanted", "provider")

    def __init__(self) -> None:
        self.clock: Callable[[], int] = time_ns  # records are stamped with it (tests step it)
        self.events_wanted = True  # False when no sink takes analytics events
        # Fills the scope fields no scope set, read only when a record is made.
        self.provider: Callable[[], Mapping[str, Any]] | None = None

    def apply(
        self,
        clock: Callable[[], int],
        events_wanted: bool,
        provider: Callable[[], Mapping[str, Any]] | None,
    ) -> None:
        """Take a new configuration's values (configure() and shutdown() call this)."""
        self.clock = clock
        self.events_wanted = events_wanted
        self.provider = provider


runtime = Runtime()
