"""cutoff_from(): what an ``older_than=`` argument means, for every purge alike.

``purge_idempotency_keys()`` and ``purge_audit()`` both take an age (``timedelta``) or an
aware cutoff ``datetime``, and say the same thing when given something else.
"""

from __future__ import annotations

import datetime

from obs_sdk.exceptions import ConfigurationError

__all__ = ["cutoff_from"]


def cutoff_from(older_than: object, where: str, now: datetime.datetime) -> datetime.datetime:
    """Return the cutoff that *older_than* names: *now* minus an age, or the datetime itself.

    Raises:
        ConfigurationError: a negative age, a naive datetime or another type; the message
            names the call *where* (e.g. ``"purge_audit"``).
    """
    if isinstance(older_than, datetime.timedelta):
        if older_than < datetime.timedelta(0):
            raise ConfigurationError(f"{where}(older_than=...) must not be negative")
        return now - older_than
    if isinstance(older_than, datetime.datetime) and older_than.tzinfo is not None:
        return older_than
    raise ConfigurationError(
        f"{where}(older_than=...) takes a timedelta (an age) or an aware datetime (a cutoff), "
        f"got {older_than!r}"
    )
