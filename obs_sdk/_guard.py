"""The internal-error boundary: guard(), the "obs_sdk" logger, and the error counter.

No error of obs_sdk's own (a sink, a template, a serializer, a resolver, the queue) may
reach the caller. ``guard(site)`` catches ``Exception`` (never ``BaseException``: a
``KeyboardInterrupt`` or ``CancelledError`` must flow on), logs it once per site, function
and type per interval, and counts it in ``obs.stats()["internal_errors"]``.

The log is one WARNING line a person can act on: which decorated function and action (and
field), and the error; its traceback goes to DEBUG, starting at the first frame of the
user's code (their property, their callable) rather than in obs_sdk's or generated frames.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = [
    "COUNTERS",
    "count",
    "count_error",
    "counters",
    "guard",
    "logger",
    "set_test_hook",
    "warn_once",
]

logger = logging.getLogger("obs_sdk")

LOG_INTERVAL_SECONDS = 60.0

_lock = threading.Lock()


def _after_fork() -> None:
    # A lock held by another thread at fork time stays held in the child: start afresh.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
_last_logged: dict[tuple[str, str | None, type[BaseException]], float] = {}
_errors = {"internal_errors": 0}
# Outcomes that are not errors but must never pass unseen, each a top-level key of stats():
#   no_actor: records filed anonymous because no actor was in scope;
#   rolled_back: records dropped with the transaction they were held for;
#   late: records made in a child task or thread after its scope's transaction had ended,
#         written on their own; duplicate_unread: repeated once() keys whose flag was never read;
#   set_actor_outside_scope: set_actor() calls with no scope to change (nothing was set);
#   unloaded: template fields left NULL because an ORM attribute was not loaded;
#   sanitized: records whose values were changed so that every database can store them;
#   after_commit_dropped: obs.after_commit() callbacks dropped, no commit having followed them.
#   unsent_events: analytics events not sent (no PostHog client, or no actor in scope).
# Each is a key of obs.Stats (_stats.py) too.
COUNTERS = (
    "no_actor",
    "rolled_back",
    "late",
    "duplicate_unread",
    "set_actor_outside_scope",
    "unloaded",
    "sanitized",
    "after_commit_dropped",
    "unsent_events",
)
_counts = dict.fromkeys(COUNTERS, 0)
_warned: set[object] = set()
_test_hook: Callable[[str, BaseException], None] | None = None


def set_test_hook(hook: Callable[[str, BaseException], None] | None) -> None:
    """Let tests make swallowed errors loud (re-raise them); None restores swallowing."""
    global _test_hook
    _test_hook = hook


def internal_errors() -> int:
    """Return how many internal errors were swallowed since the last reset."""
    return _errors["internal_errors"]


def reset() -> None:
    """Zero the counter and the log rate limiter (configure() starts a fresh count)."""
    with _lock:
        _errors["internal_errors"] = 0
        _last_logged.clear()
        _warned.clear()
        for name in COUNTERS:
            _counts[name] = 0


def count(name: str, n: int = 1) -> None:
    """Add *n* to the stats() counter *name* (one of COUNTERS)."""
    with _lock:
        _counts[name] += n


def counters() -> dict[str, int]:
    """Return a snapshot of the COUNTERS since the last configure()."""
    with _lock:
        return dict(_counts)


def warn_once(key: object, message: str, *args: object) -> None:
    """Log *message* as a WARNING the first time *key* is seen since configure()."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def count_error(site: str, exc: BaseException, about: str | None = None) -> None:
    """Count and (rate-limited) log an error that obs_sdk swallowed at *site*.

    *about* names what failed for the user: the decorated function and action, and the
    field (``"@audited('file.downloaded') on download (app/files.py:12): field
    resource.name ('{result.name}')"``).
    """
    now = time.monotonic()
    with _lock:
        _errors["internal_errors"] += 1
        key = (site, about, type(exc))
        due = now - _last_logged.get(key, -LOG_INTERVAL_SECONDS) >= LOG_INTERVAL_SECONDS
        if due:
            _last_logged[key] = now
    if due:
        where = about or f"internal error in {site}"
        logger.warning(
            "obs_sdk: %s: %s (the caller's operation was not affected; traceback at DEBUG on "
            "the obs_sdk logger; further %s errors here are counted in "
            "obs.stats()['internal_errors'] and not logged for %.0f s)",
            where,
            _one_line(exc),
            type(exc).__name__,
            LOG_INTERVAL_SECONDS,
        )
        logger.debug(
            "obs_sdk: %s: the traceback", where, exc_info=(type(exc), exc, _users_part(exc))
        )
    hook = _test_hook
    if hook is not None:
        hook(site, exc)


MAX_ERROR_CHARS = 300


def _one_line(exc: BaseException) -> str:
    """The error's class and text on one line; a database error's class only.

    A database error's text quotes the statement and its parameters (emails, metadata):
    its class, its driver error's class and its SQLSTATE say what went wrong.
    """
    orig = getattr(exc, "orig", None)
    if orig is not None:
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        return f"{type(exc).__name__} from {type(orig).__name__}" + (f" ({code})" if code else "")
    text = " ".join(str(exc).split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_OURS = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _ours(filename: str) -> bool:
    """Whether a frame's file is obs_sdk's: the package, its integrations, generated code."""
    if filename.startswith(("<obs_sdk ", _OURS)):
        return True
    integrations = sys.modules.get("obs_sdk.integrations")
    paths = getattr(integrations, "__path__", None) or ()
    return any(filename.startswith(os.path.join(path, "")) for path in paths)


def _users_part(exc: BaseException) -> TracebackType | None:
    """The traceback from its first frame outside obs_sdk: where the user's code failed.

    All of it when no frame is the user's (an error of obs_sdk's own).
    """
    tb = exc.__traceback__
    while tb is not None and _ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb if tb is not None else exc.__traceback__


class guard:
    """Swallow, count and log any ``Exception`` raised in the block. Never wrap user code in it."""

    __slots__ = ("site",)

    def __init__(self, site: str) -> None:
        self.site = site

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        count_error(self.site, exc)
        return True
