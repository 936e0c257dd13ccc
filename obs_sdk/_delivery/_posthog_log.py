"""One line when PostHog cannot be reached, not one per batch.

posthog-python's consumer logs an ERROR on its ``posthog`` logger for every batch it fails to
upload ("error uploading: ..."), and its ``flush()`` a WARNING when it runs out of time: a
receiver that is down (connection refused) prints dozens of lines a second, and obs_sdk's
``posthog_on_error`` used to add a traceback. Once a PostHog sink is configured, a filter
on the ``posthog`` logger takes those two messages (the second only inside the sink's own
flush): the first failure is said once as a
WARNING of ours (the sink, the host, what to do), then at most once per interval with the
count since; each failure goes to the ``obs_sdk`` logger at DEBUG (with the traceback when
``on_error=obs.posthog_on_error`` passed the exception). Every other ``posthog`` message
passes untouched. The filter stays after shutdown(): the client's consumer goes on
uploading (and failing) what the sink handed it. Nothing of posthog is imported.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from obs_sdk._guard import logger
from obs_sdk._vendor_private import POSTHOG_FLUSH_BUDGET, POSTHOG_UPLOAD_ERROR

__all__ = ["flushing", "install", "upload_failed"]

WARNING_SECONDS = 60.0  # at most one warning per interval while uploads keep failing

# What posthog's logger says of a failed upload and of a flush out of time (ours, here).
_UPLOAD_ERROR, _FLUSH_BUDGET = POSTHOG_UPLOAD_ERROR, POSTHOG_FLUSH_BUDGET


class _Reporter(logging.Filter):
    """The filter on the ``posthog`` logger, and the rate-limited warning it stands for."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self._lock = threading.Lock()
        self._warned_at: float | None = None
        self._unsaid = 0  # failed uploads since the last warning

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _UPLOAD_ERROR in message:
            logger.debug("obs_sdk: PostHog sink: %s", message)
            self.failed(message.split(_UPLOAD_ERROR, 1)[1].lstrip(": "))
            return False
        # A flush of ours that ran out of time: flush() returns False and says so.
        return not (_FLUSH_BUDGET in message and _in_our_flush())

    def failed(self, error: str) -> None:
        """One upload failed with *error*: warn now if none was said this interval."""
        now = time.monotonic()
        with self._lock:
            self._unsaid += 1
            if self._warned_at is not None and now - self._warned_at < WARNING_SECONDS:
                return
            self._warned_at, failures, self._unsaid = now, self._unsaid, 0
        logger.warning(
            "obs_sdk: the PostHog sink cannot upload to %s (%s): %d batch(es) failed and "
            "PostHog's client drops them after its retries. Check that PostHog is reachable "
            "at that host (posthog.Posthog(host=...)); obs.stats()['by_sink']['posthog']"
            "['upload_failed'] counts lost events with on_error=obs.posthog_on_error. At "
            "most one such warning every %.0f s; each failure at DEBUG.",
            self.host,
            _cause(error),
            failures,
            WARNING_SECONDS,
        )


_flushing = threading.local()


def _in_our_flush() -> bool:
    return bool(getattr(_flushing, "depth", 0))


class flushing:
    """Marks the thread as inside the sink's own ``client.flush()``."""

    def __enter__(self) -> None:
        _flushing.depth = getattr(_flushing, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _flushing.depth -= 1


# What a routine network error says, in few words (requests' messages run to 300 characters).
_CAUSES = (
    ("Connection refused", "connection refused: is the receiver running?"),
    ("timed out", "timed out"),
    ("Name or service not known", "host name not found"),
    ("Temporary failure in name resolution", "host name not found"),
    ("No route to host", "no route to host"),
    ("Connection reset", "connection reset"),
)
MAX_CAUSE_CHARS = 200


def _cause(error: str) -> str:
    for marker, said in _CAUSES:
        if marker in error:
            return said
    error = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return error if len(error) <= MAX_CAUSE_CHARS else error[: MAX_CAUSE_CHARS - 3] + "..."


_installed: _Reporter | None = None


def install(client: Any) -> None:
    """Take over *client*'s upload-failure logs (configure() with a PostHog sink).

    Stays after shutdown(): the client's consumer goes on uploading (and failing) what the
    sink handed it. A later configuration's client replaces the host it names.
    """
    global _installed
    host = str(getattr(client, "host", None) or "the configured host")
    if _installed is not None:
        _installed.host = host
        return
    _installed = _Reporter(host)
    logging.getLogger("posthog").addFilter(_installed)


def upload_failed(error: Exception) -> None:
    """``on_error`` saw *error*: its traceback at DEBUG (the filter says the line)."""
    logger.debug("obs_sdk: PostHog sink: upload failed", exc_info=error)
