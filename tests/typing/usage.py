"""Checked by mypy (not run by pytest): decorators keep argument and return types.

``assert_type`` pins the public types; a ``type: ignore[arg-type]`` marks a call mypy must
refuse (warn_unused_ignores fails the check when it no longer does).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from typing_extensions import assert_type

import obs_sdk as obs
from obs_sdk._delivery._sinks import DatabaseSink, PostHogSink, Sink
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


# -- the public types a user annotates with (issue 16, item 6) --------------------------------

version: str = obs.__version__
assert_type(obs.stats(), obs.Stats)
assert_type(obs.stats()["delivered"], int)
assert_type(obs.stats()["by_sink"]["database"]["queued"], int)
assert_type(obs.current_scope(), obs.Scope)
assert_type(obs.audit_log(), list[obs.AuditRecord])
assert_type(obs.audit_log(order="asc", limit=10)[0].occurred_at, datetime.datetime)


def file_name(call: obs.Call) -> str:
    """A callable field: typed through obs.Call."""
    return str(call.args["file_id"])


@obs.audited("file.read", resource=obs.Resource("file", "{file_id}", name=file_name), when="start")
def read(file_id: str) -> bytes:
    return file_id.encode()


assert_type(read("f_1"), bytes)
obs.audited("file.read", when="sucess")  # type: ignore[arg-type]  # not one of the four
obs.tracked("file_read", when="later")  # type: ignore[arg-type]
obs.audit_log(order="newest")  # type: ignore[arg-type]


async def newest(engine: AsyncEngine) -> list[obs.AuditRecord]:
    assert_type(await obs.aaudit_log(engine, after="0" * 32), list[obs.AuditRecord])
    return await obs.aaudit_log()
