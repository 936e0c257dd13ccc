"""Many processes on one PostgreSQL: nothing lost, nothing doubled, no quota exceeded.

The scenario of ``python -m benchmarks.scale`` (issue 15), smaller: 4 real processes of 4
threads each make plain audited calls and deliver every upload event twice (once per
neighbouring process, at about the same moment) through ``@obs.idempotent`` and
``@audited``, charging each object with ``metered_storage`` under quotas that refuse some.
The checks are the benchmark's own (``benchmarks.scale._check``), read from the database
and from every process's ``obs.stats()``.
"""

from __future__ import annotations

import pytest

from benchmarks import scale

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]

SMALL = scale.Scenario(processes=4, threads=4, jobs=12, reads=10)


def test_processes_and_threads_lose_nothing_and_double_nothing(postgres_url: str) -> None:
    result = scale.run(postgres_url, SMALL)
    assert result.problems == []
    assert result.rows == SMALL.events * SMALL.reads + result.committed
    assert result.committed == result.duplicates  # each committed event's other delivery
    assert result.refused > 0  # the quotas were reached: the check above had work to do
    assert result.committed + result.refused // 2 == SMALL.events
