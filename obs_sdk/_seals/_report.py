"""What verification found: the findings, the erased fields, the purged ranges."""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass

__all__ = ["FINDING_KINDS", "Finding", "PurgedRange", "VerifyReport"]

# Each kind, and what it means for a reader of the summary.
FINDING_KINDS = {
    "modified": "record changed since it was sealed",
    "deleted": "sealed record missing (and not purged)",
    "inserted_after_sealing": "record older than a seal, not in it",
    "unsealed": "record left unsealed longer than the sealing interval",
    "bad_signature": "seal not signed by the given key",
    "unknown_key": "seal signed by a key not given",
    "bad_root": "seal's leaves do not hash to its signed root",
    "broken_link": "seal does not follow the seal before it",
    "missing_seal": "seal missing from the chain",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One integrity problem: its kind (see FINDING_KINDS), the record or seal, and why."""

    kind: str
    record_id: str | None
    seal: int | None
    detail: str

    def __str__(self) -> str:
        where = f"record {self.record_id}" if self.record_id else f"seal {self.seal}"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass(frozen=True, slots=True)
class PurgedRange:
    """One retention run: the records of seals 1..through_seal older than cutoff were deleted.

    ``signed`` is True once a later seal signed the purge (until then it rests on the
    purge log alone).
    """

    through_seal: int
    records: int
    cutoff: datetime.datetime
    purged_at: datetime.datetime
    signed: bool


@dataclass(frozen=True)
class VerifyReport:
    """The result of obs.verify(): every finding of one pass. True when ``ok``.

    ``records_checked`` counts the sealed records recomputed; ``pending`` the records not
    sealed yet but younger than the sealing interval (not a finding); ``erased`` maps a
    record id to its personal fields removed by erase_actor(); ``purged_records`` counts
    sealed records deleted by purge_audit(); ``late`` lists records sealed well after a
    later seal was made (a very long transaction, or a back-dated insert): a notice.
    """

    records_checked: int
    seals_checked: int
    findings: tuple[Finding, ...]
    erased: dict[str, tuple[str, ...]]
    purged: tuple[PurgedRange, ...]
    purged_records: int
    pending: int
    late: tuple[str, ...]
    organization: str | None = None

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    def __bool__(self) -> bool:
        return self.ok

    def of_kind(self, kind: str) -> list[str]:
        """Return the record ids (or seal numbers, as text) of the findings of *kind*."""
        return [f.record_id or str(f.seal) for f in self.findings if f.kind == kind]

    def summary(self) -> str:
        """Return a readable account: the verdict, the counts, then each finding."""
        scope = f" of organization {self.organization}" if self.organization else ""
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.records_checked:,} sealed records"
            f"{scope} checked in {self.seals_checked:,} seals"
        )
        lines = [head]
        if self.findings:
            counts = Counter(f.kind for f in self.findings)
            lines.append(
                f"{len(self.findings):,} findings: "
                + ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items()))
            )
        if self.pending:
            lines.append(f"{self.pending:,} records not sealed yet (within the sealing interval)")
        if self.erased:
            fields = sum(len(v) for v in self.erased.values())
            lines.append(
                f"{len(self.erased):,} records have erased personal fields ({fields:,} fields)"
            )
        for p in self.purged:
            lines.append(
                f"purged: {p.records:,} records of seals 1-{p.through_seal} (older than "
                f"{p.cutoff.isoformat()}), on {p.purged_at.isoformat()}"
                + ("" if p.signed else "; not signed by a seal yet")
            )
        if self.late:
            lines.append(f"{len(self.late):,} records were sealed late (notice)")
        lines.extend(f"  {f}" for f in self.findings[:200])
        if len(self.findings) > 200:  # noqa: PLR2004  (a readable summary)
            lines.append(f"  ... and {len(self.findings) - 200:,} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
