"""Process lifecycle: deliver what is queued when the process is asked to stop (SIGTERM).

SIGTERM is how containers, systemd and Kubernetes stop a process. Its default action ends
the process at once, without atexit hooks, so every queued record would be lost. At
configure() (unless ``configure(handle_signals=False)``) obs_sdk installs a handler that
flushes within a timeout and then terminates as before:

- SIGTERM at its default (SIG_DFL): the default is restored and the signal raised again,
  so the exit status stays the usual one (-15 from ``subprocess``, 143 from a shell);
- an application's own Python handler: it is chained, and called after the flush;
- SIG_IGN, or a handler set outside Python: left alone.

SIGINT is not touched: Python's default raises KeyboardInterrupt, the interpreter exits
normally and the atexit hook delivers the queue.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from obs_sdk._guard import count_error, logger

__all__ = ["install_signal_handlers", "uninstall_signal_handlers"]

# A flush runs on a helper thread (see _TermHandler.__call__); it gets this long beyond its
# own timeout before termination goes ahead without it.
JOIN_MARGIN_SECONDS = 1.0

_Previous = Callable[[int, FrameType | None], Any] | int | signal.Handlers


class _TermHandler:
    """The SIGTERM handler: flush within *timeout*, then do what *previous* would have done."""

    def __init__(self, flush: Callable[[float], bool], timeout: float, previous: _Previous):
        self.flush = flush
        self.timeout = timeout
        self.previous = previous
        self.active = True  # False after uninstall: a handler chained above ours may still call us
        self._handling = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.active and not self._handling:  # a second SIGTERM while flushing: stop now
            self._handling = True
            try:
                self._flush()
            finally:
                self._handling = False
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
            return
        # SIG_DFL: terminate as if we had never been here (the exit status says SIGTERM).
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _flush(self) -> None:
        # Python runs signal handlers on the main thread between bytecodes, possibly while
        # that thread holds one of obs_sdk's locks: a flush on the main thread could then
        # wait forever. On a helper thread it can only time out.
        done = threading.Event()
        delivered: list[bool] = []

        def run() -> None:
            try:
                delivered.append(self.flush(self.timeout))
            except Exception as exc:
                count_error("sigterm_flush", exc)
            finally:
                done.set()

        try:
            threading.Thread(target=run, name="obs-sdk-sigterm-flush", daemon=True).start()
        except RuntimeError:  # no new threads (interpreter shutdown): flush here
            run()
        done.wait(self.timeout + JOIN_MARGIN_SECONDS)
        if delivered != [True]:
            logger.warning(
                "obs_sdk: SIGTERM: not every queued record was delivered within %.1f s",
                self.timeout,
            )


_handler: _TermHandler | None = None


def install_signal_handlers(flush: Callable[[float], bool], timeout: float) -> None:
    """Make SIGTERM flush (within *timeout* seconds) before the process terminates.

    *flush* is called with *timeout* and returns True when everything was delivered (e.g.
    ``obs.flush``). Installed when SIGTERM has its default action (after the flush the
    default is restored and the signal raised again: the exit status is unchanged) or a
    Python handler, which is chained: called after the flush, with the same arguments.
    SIG_IGN and handlers set outside Python are left alone. Calling it again updates
    *flush* and *timeout* of the handler already installed (it never chains to itself).
    A second SIGTERM during the flush stops waiting for it and terminates at once.
    SIGINT is left to Python (KeyboardInterrupt, then atexit delivers the queue).

    Only the main thread may set signal handlers: from another thread this does nothing
    (a DEBUG log says so). Not thread-safe: configure() calls it once at startup.
    """
    global _handler
    if threading.current_thread() is not threading.main_thread():
        logger.debug("obs_sdk: SIGTERM handler not installed: configure() ran off the main thread")
        return
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, _TermHandler):
        current.flush, current.timeout, current.active = flush, timeout, True
        _handler = current
        return
    if current is None or current == signal.SIG_IGN:
        logger.debug("obs_sdk: SIGTERM handler not installed: SIGTERM is ignored or not Python's")
        return
    handler = _TermHandler(flush, timeout, current)
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # the main thread of a subinterpreter
        logger.debug("obs_sdk: SIGTERM handler not installed: signals are not ours to set here")
        return
    if _handler is not None:
        _handler.active = False  # replaced over an app's handler that chained the old one
    _handler = handler


def uninstall_signal_handlers() -> None:
    """Undo install_signal_handlers(): restore the previous SIGTERM handler if ours is current.

    When another handler was set over ours since, it stays; ours, if it still calls it,
    then passes straight on to the handler before it. From a thread other than the main
    thread this only does the latter. Not thread-safe: shutdown() calls it.
    """
    global _handler
    handler, _handler = _handler, None
    if handler is None:
        return
    handler.active = False
    if threading.current_thread() is not threading.main_thread():
        logger.debug("obs_sdk: SIGTERM handler left in place (passive): not on the main thread")
        return
    previous = handler.previous
    if signal.getsignal(signal.SIGTERM) is handler:
        signal.signal(signal.SIGTERM, previous)
