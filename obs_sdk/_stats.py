"""The types of ``obs.stats()``: what a user annotates a stats dict with."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["SinkStats", "Stats"]


class _Deliveries(TypedDict):
    """The delivery counters, kept for all records (``Stats``) and for each sink alike."""

    submitted: int
    queued: int
    delivered: int
    dropped: int
    failed: int
    retried: int


class SinkStats(_Deliveries):
    """One sink's counters in ``Stats["by_sink"]``: its own queue and deliveries.

    ``upload_failed`` counts what a destination lost after it was handed over (a PostHog
    upload that failed, reported through ``on_error=obs.posthog_on_error``).
    """

    upload_failed: int


class Stats(_Deliveries):
    """What ``obs.stats()`` returns: counters since the last ``configure()``.

    Invariant: ``submitted == queued + delivered + dropped + failed``. The top-level counts
    follow each record to its primary sink (the audit log for audits; PostHog for analytics
    events, else OpenTelemetry logs, else the console). ``internal_errors`` counts errors
    obs_sdk swallowed (the callers' operations went on). The others count outcomes that are
    not errors but must not pass unseen: ``no_actor`` records filed anonymous because no
    actor was in scope; ``rolled_back`` records dropped with their transaction; ``late``
    records made after their scope's transaction ended, written on their own;
    ``duplicate_unread`` repeated ``once()`` keys whose flag was never read;
    ``set_actor_outside_scope`` ``set_actor()`` calls with no scope to change; ``unloaded``
    template fields left NULL because an ORM attribute was not loaded; ``sanitized``
    records whose values were changed so that every database stores them; ``unsent_events``
    analytics events not sent: no PostHog client (nor OpenTelemetry logs) configured, or
    no actor in scope without ``allow_anonymous``; ``after_commit_dropped``
    ``obs.after_commit()`` callbacks dropped because no commit followed them.
    """

    internal_errors: int
    by_sink: dict[str, SinkStats]
    no_actor: int
    rolled_back: int
    late: int
    duplicate_unread: int
    set_actor_outside_scope: int
    unloaded: int
    sanitized: int
    unsent_events: int
    after_commit_dropped: int
