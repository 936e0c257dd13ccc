"""obs.verify(): recompute every seal and every sealed record, and report all it finds."""

from __future__ import annotations

import datetime
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection, Engine

from obs_sdk._seals import _merkle
from obs_sdk._seals._hasher import LeafHasher
from obs_sdk._seals._leaf import leaf_of, row_reader, sealed_leaf_hash, value_reader
from obs_sdk._seals._report import Finding, PurgedRange, VerifyReport
from obs_sdk._seals._seal import (
    GENESIS_ROOT,
    Ledger,
    driver_rows,
    header_bytes,
    ledger_engine,
    sealing,
)
from obs_sdk._seals._signing import public_keys, signature_ok

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["DEFAULT_MAX_UNSEALED_AGE", "check_seals", "verify"]

DEFAULT_MAX_UNSEALED_AGE = datetime.timedelta(minutes=10)
_PROGRESS_EVERY = 10_000
_UTC = datetime.timezone.utc


def verify(
    bind: Engine | str | None = None,
    *,
    public_key: object,
    organization: str | None = None,
    max_unsealed_age: datetime.timedelta = DEFAULT_MAX_UNSEALED_AGE,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Recompute every seal and sealed record; return a report of everything found.

    In one pass: each seal's signature (by the key its key id names: pass every public
    key in use, a list when keys rotated), its link to the previous seal and its Merkle
    root; each sealed record's leaf, so a modified or deleted record is named by id;
    records missing from the seals: older than a seal (inserted after sealing) or
    unsealed longer than *max_unsealed_age*. Erased fields and purged ranges are
    reported as such, not as tampering. With *organization*, only that organization's
    records are read (the seals are still checked whole).

    *progress*, if given, is called with the number of sealed records read so far, every
    10,000 and at the end (for a progress bar; count them beforehand with
    ``SELECT count(*) FROM obs_seal_leaves``). Runs under the sealer lock (a seal waits
    for it; writers do not). Thread-safe.

    Raises:
        ConfigurationError: no database, or *public_key* is not an Ed25519 public key.
        MissingDependencyError: ``cryptography`` is not installed (``obs-sdk[seal]``).
    """
    keys = public_keys(public_key)
    with ledger_engine(bind, "verify()") as ledger, sealing(ledger) as conn:
        assert conn is not None  # a waiting lock is always acquired
        return _Check(ledger, conn, keys, organization, max_unsealed_age, progress).run()


def check_seals(
    seals: Sequence[Mapping[str, Any]], keys: Mapping[str, Ed25519PublicKey]
) -> tuple[list[Finding], int]:
    """Check the chain of seal headers (signature, order, links); return (findings, purged).

    *purged* is the highest ``purged_through`` that a validly signed seal carries.
    """
    findings = []
    purged_through = 0
    expected, prev_root = 1, GENESIS_ROOT
    for seal in seals:
        seq = seal["seq"]
        if seq != expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
            findings.append(Finding("missing_seal", None, seq, f"seals {missing} are missing"))
        key = keys.get(seal["key_id"])
        if key is None:
            findings.append(
                Finding("unknown_key", None, seq, f"signed by key {seal['key_id']}, not given")
            )
        elif not signature_ok(key, header_bytes(seal), seal["signature"]):
            findings.append(
                Finding("bad_signature", None, seq, "its signature does not match its contents")
            )
        else:
            purged_through = max(purged_through, seal["purged_through"])
        if seal["prev_root"] != prev_root:
            findings.append(
                Finding(
                    "broken_link",
                    None,
                    seq,
                    f"its previous root {seal['prev_root'][:16]}... is not the root "
                    f"{prev_root[:16]}... of the seal before it",
                )
            )
        expected, prev_root = seq + 1, seal["root"]
    return findings, purged_through


def _same(value: Any) -> Any:
    return value


class _Check:
    """One verification pass; its state is the report being built."""

    def __init__(
        self,
        ledger: Ledger,
        conn: Connection,
        keys: Mapping[str, Ed25519PublicKey],
        organization: str | None,
        max_unsealed_age: datetime.timedelta,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.progress = progress
        self.t = ledger.t
        self.conn = conn
        self.keys = keys
        self.organization = organization
        self.grace = max_unsealed_age
        self.findings: list[Finding] = []
        self.erased: dict[str, tuple[str, ...]] = {}
        self.late: list[str] = []
        self.checked = 0
        self.purged_records = 0
        self._closed: set[int] = set()

    def run(self) -> VerifyReport:
        t = self.t
        seals = [
            dict(r) for r in self.conn.execute(select(t.seals).order_by(t.seals.c.seq)).mappings()
        ]
        found, signed_purge = check_seals(seals, self.keys)
        self.findings.extend(found)
        purges = (
            self.conn.execute(select(t.seal_purges).order_by(t.seal_purges.c.id)).mappings().all()
        )
        purged_through = max([signed_purge, *(p["through_seal"] for p in purges)])
        self._leaves({s["seq"]: s for s in seals}, purged_through)
        pending = self._unsealed(seals[-1]["sealed_at"] if seals else None)
        self.conn.rollback()
        return VerifyReport(
            records_checked=self.checked,
            seals_checked=len(seals),
            findings=tuple(self.findings),
            erased=self.erased,
            purged=tuple(
                PurgedRange(
                    p["through_seal"],
                    p["records"],
                    p["cutoff"],
                    p["purged_at"],
                    p["through_seal"] <= signed_purge,
                )
                for p in purges
            ),
            purged_records=self.purged_records,
            pending=pending,
            late=tuple(self.late),
            organization=self.organization,
        )

    def _leaves(self, seals: dict[int, Mapping[str, Any]], purged_through: int) -> None:
        t = self.t
        leaves, audit = t.seal_leaves, t.audit
        joined = audit.c.id == leaves.c.record_id
        if self.organization is not None:  # other organizations' records are never read
            joined = and_(joined, leaves.c.organization_id == self.organization)
        query = (
            select(
                leaves.c.seal_seq,
                leaves.c.position,
                leaves.c.record_id,
                leaves.c.leaf_hash,
                leaves.c.organization_id,
                leaves.c.commitments,
                leaves.c.salt,
                *audit.columns,
            )
            .select_from(leaves.outerjoin(audit, joined))
            .order_by(leaves.c.seal_seq, leaves.c.position)
        )
        with driver_rows(self.conn, query) as result:
            self._check_leaves(result, seals, purged_through)

    def _check_leaves(
        self,
        result: Any,
        seals: dict[int, Mapping[str, Any]],
        purged_through: int,
    ) -> None:
        # Rows as the driver returns them, read as the seal read them (see _leaf.row_reader).
        dialect = self.conn.dialect
        leaves = self.t.seal_leaves.c
        columns = list(self.t.audit.columns)
        leaf_hash = LeafHasher(dialect, columns)
        fields_of = row_reader(dialect, columns)  # the reference, for what LeafHasher leaves
        occurred_at = [c.name for c in columns].index("occurred_at")
        occurred_of = value_reader(dialect, columns[occurred_at]) or _same
        id_text = value_reader(dialect, leaves.record_id) or str
        stored_of = value_reader(dialect, leaves.commitments) or _same
        # "Late": occurred before the seal before its own, by more than the grace; compared
        # as ISO 8601 UTC text, as the leaf holds the time.
        late_before = {
            number + 1: (seal["sealed_at"] - self.grace)
            .astimezone(_UTC)
            .isoformat(timespec="microseconds")
            for number, seal in seals.items()
        }
        seq, hashes, read = 0, list[bytes](), 0
        # In batches (fetchmany): row by row, psycopg's fetchone() cost more than the row.
        batches = iter(functools.partial(result.cursor.fetchmany, _PROGRESS_EVERY), [])
        rows = itertools.chain.from_iterable(batches)
        for read, row in enumerate(rows, 1):
            if self.progress is not None and read % _PROGRESS_EVERY == 0:
                self.progress(read)
            if row[0] != seq:
                self._close_seal(seals, seq, hashes)
                seq, hashes = row[0], []
            if row[1] != len(hashes):
                self.findings.append(
                    Finding("bad_root", None, seq, f"leaf position {len(hashes)} is missing")
                )
            hashes.append(row[3])
            if self.organization is not None and row[4] != self.organization:
                continue
            if row[7] is None:
                if seq <= purged_through:
                    self.purged_records += 1
                else:
                    self.findings.append(
                        Finding("deleted", id_text(row[2]), seq, "sealed, now missing (not purged)")
                    )
                continue
            self.checked += 1
            record = row[7:]
            salt, stored = row[6], row[5]
            erased: tuple[str, ...] = ()
            problem: str | None = None
            # Nothing erased: the seal's own path (the reference where LeafHasher declines).
            digest = None if stored is not None else leaf_hash(record, salt)
            if digest is None and salt is not None and stored is None:
                digest = sealed_leaf_hash(fields_of(record), salt)
            elif digest is None:
                fields = fields_of(record)
                leaf = leaf_of(fields, salt, None if stored is None else stored_of(stored))
                digest, problem, erased = leaf.hash, leaf.problem, leaf.erased
            if problem or digest != row[3]:
                problem = problem or "its contents differ from what was sealed"
                self.findings.append(Finding("modified", id_text(row[2]), seq, problem))
            elif erased:
                self.erased[id_text(row[2])] = erased
            before = late_before.get(seq)
            occurred = record[occurred_at]
            if before is not None and occurred is not None and occurred_of(occurred) < before:
                self.late.append(id_text(row[2]))
        self._close_seal(seals, seq, hashes)
        if self.progress is not None:
            self.progress(read)
        for number in seals:
            if number not in self._closed:  # a seal without leaves: empty, or they were deleted
                self._close_seal(seals, number, [])

    def _close_seal(
        self, seals: dict[int, Mapping[str, Any]], seq: int, hashes: list[bytes]
    ) -> None:
        if not seq:  # before the first leaf
            return
        self._closed.add(seq)
        seal = seals.get(seq)
        if seal is None:
            self.findings.append(
                Finding("missing_seal", None, seq, f"{len(hashes):,} sealed records name it")
            )
            return
        if len(hashes) != seal["size"]:
            self.findings.append(
                Finding(
                    "bad_root",
                    None,
                    seq,
                    f"{len(hashes):,} leaves stored, the seal signs {seal['size']:,}",
                )
            )
        elif _merkle.root(hashes).hex() != seal["root"]:
            self.findings.append(
                Finding("bad_root", None, seq, "its stored leaves do not hash to its signed root")
            )

    def _unsealed(self, last_sealed_at: datetime.datetime | None) -> int:
        t = self.t
        audit, leaves = t.audit, t.seal_leaves
        query = (
            select(audit.c.id, audit.c.occurred_at)
            .outerjoin(leaves, leaves.c.record_id == audit.c.id)
            .where(leaves.c.record_id.is_(None))
            .order_by(audit.c.id)
        )
        if self.organization is not None:
            query = query.where(audit.c.organization_id == self.organization)
        now = datetime.datetime.now(_UTC)
        pending = 0
        with self.conn.execute(query) as result:
            rows = list(result)
        for record_id, occurred_at in rows:
            if last_sealed_at is not None and occurred_at < last_sealed_at - self.grace:
                self.findings.append(
                    Finding(
                        "inserted_after_sealing",
                        str(record_id),
                        None,
                        f"occurred {occurred_at.isoformat()}, before the seal of "
                        f"{last_sealed_at.isoformat()}, and is in no seal",
                    )
                )
            elif now - occurred_at > self.grace:
                self.findings.append(
                    Finding(
                        "unsealed",
                        str(record_id),
                        None,
                        f"unsealed since {occurred_at.isoformat()}: is the sealer running?",
                    )
                )
            else:
                pending += 1
        return pending
