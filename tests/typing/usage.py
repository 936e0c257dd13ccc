"""Checked by mypy (not run by pytest): decorators keep argument and return types."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk._sinks import DatabaseSink, PostHogSink, Sink
from obs_sdk.testing import CaptureSink


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str, *, inline: bool = False) -> bytes:
    return file_id.encode()


@obs.tracked("rows_exported")
def rows(n: int) -> Iterator[int]:
    yield from range(n)


@obs.audited("op")
async def fetch(url: str) -> int:
    return len(url)


@obs.audited("member.promoted", changes=("Membership",))
def promote(session: Session, user_id: str) -> None:
    obs.record_audit("member.seen", changes=True)


@obs.idempotent(key="jobs:{job_id}")
def run_job(session: Session, job_id: str) -> int:
    return len(job_id)


data: bytes = download("f_1", inline=True)
count: int = sum(rows(3))


async def use() -> int:
    return await fetch("https://example.com")


def once_per_job(session: Session) -> int | None:
    return run_job(session, "j_1")  # None for a duplicate


def sinks(database: DatabaseSink, posthog: PostHogSink, capture: CaptureSink) -> list[Sink]:
    return [database, posthog, capture]
