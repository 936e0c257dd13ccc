"""Inclusion proofs: obs.prove(), obs_sdk.verify_proof(), and one organization's bundle.

A proof is plain JSON: the record's fields, its salt (or, once erased, the commitments),
its place in its seal's tree, the RFC 9162 audit path, and the signed seal. Checking it
needs the public key and nothing else: no database, no obs_sdk configuration.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from obs_sdk._ledger._tables import Tables
from obs_sdk._seals import _merkle
from obs_sdk._seals._leaf import leaf_of, record_fields
from obs_sdk._seals._report import Finding, VerifyReport
from obs_sdk._seals._seal import header_bytes, ledger_engine
from obs_sdk._seals._signing import public_keys, signature_ok
from obs_sdk._seals._verify import check_seals

__all__ = [
    "ProofResult",
    "export_bundle",
    "iter_proofs",
    "prove",
    "verify_bundle",
    "verify_proof",
    "write_bundle",
]

PROOF_FORMAT = "obs-sdk-proof/1"
BUNDLE_FORMAT = "obs-sdk-bundle/1"
_SEAL_FIELDS = (
    "seq",
    "sealed_at",
    "key_id",
    "prev_root",
    "root",
    "size",
    "purged_through",
    "signature",
)


@dataclass(frozen=True, slots=True)
class ProofResult:
    """The outcome of verify_proof(): ``ok`` (also its truth value), and why not."""

    ok: bool
    record_id: str | None
    seal: int | None
    problem: str | None = None
    erased: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def _seal_json(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: row[name] for name in _SEAL_FIELDS}
    at = row["sealed_at"]
    if isinstance(at, datetime.datetime):
        out["sealed_at"] = at.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")
    return out


def prove(record_id: object, bind: Engine | str | None = None) -> dict[str, Any]:
    """Return a JSON-serializable inclusion proof of one sealed record, with its signed seal.

    Hand it to ``obs_sdk.verify_proof(proof, public_key)``, anywhere. The proof shows the
    record's fields, personal ones included (erased ones as commitments only). Thread-safe.

    Raises:
        LookupError: no such record, or it is not sealed yet (run ``obs.seal()``).
        ConfigurationError: no database.
    """
    with ledger_engine(bind, "prove()") as ledger, ledger.engine.connect() as conn:
        t = ledger.t
        proofs = _proofs(conn, t, t.seal_leaves.c.record_id == _uuid(record_id))
    if not proofs:
        raise LookupError(
            f"record {record_id} is not sealed (or does not exist): seal it with obs.seal() first"
        )
    return proofs[0]


def _uuid(value: object) -> Any:
    import uuid

    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise LookupError(f"{value!r} is not a record id (a UUID)") from None


def _proofs(conn: Connection, t: Tables, which: Any) -> list[dict[str, Any]]:
    return list(iter_proofs(conn, t, which))


def iter_proofs(conn: Connection, t: Tables, which: Any) -> Iterator[dict[str, Any]]:
    """Yield the proofs of the sealed, present records *which* selects, in seal order.

    One seal at a time: memory holds one seal's tree and its selected records, never
    the whole trail (for streamed exports).
    """
    leaves, audit = t.seal_leaves, t.audit
    # Plain str names: SQLAlchemy's quoted_name would send every record down the slow path.
    columns = [str(c.name) for c in audit.columns]
    seqs = (
        conn.execute(select(leaves.c.seal_seq).where(which).distinct().order_by(leaves.c.seal_seq))
        .scalars()
        .all()
    )
    for seq in seqs:
        seal = _seal_json(
            dict(conn.execute(select(t.seals).where(t.seals.c.seq == seq)).mappings().one())
        )
        hashes = (
            conn.execute(
                select(leaves.c.leaf_hash)
                .where(leaves.c.seal_seq == seq)
                .order_by(leaves.c.position)
            )
            .scalars()
            .all()
        )
        tree = _merkle.levels(list(hashes))
        rows = conn.execute(
            select(leaves.c.position, leaves.c.commitments, leaves.c.salt, *audit.columns)
            .select_from(leaves.join(audit, audit.c.id == leaves.c.record_id))
            .where(which, leaves.c.seal_seq == seq)
            .order_by(leaves.c.position)
        ).all()
        for position, commitments, salt, *record in rows:
            yield {
                "format": PROOF_FORMAT,
                "record": record_fields(record, columns),
                "salt": salt.hex() if salt is not None else None,
                "commitments": commitments or {},
                "leaf_index": position,
                "tree_size": len(tree[0]),
                "path": [h.hex() for h in _merkle.path(tree, position)],
                "seal": seal,
            }


def verify_proof(proof: Mapping[str, Any], public_key: object) -> ProofResult:
    """Check an inclusion proof offline: no database, no configuration, only the key.

    The record's fields hash to its leaf, the path leads from the leaf to the seal's
    root, and the seal is signed by *public_key* (one key, or a list when keys rotated).
    Returns a ProofResult, true when all three hold; a modified record fails. Thread-safe.

    Raises:
        ConfigurationError: *public_key* is not an Ed25519 public key.
        MissingDependencyError: ``cryptography`` is not installed (``obs-sdk[seal]``).
    """
    keys = public_keys(public_key, "verify_proof(public_key=...)")
    return _check_proof(proof, proof.get("seal") if isinstance(proof, Mapping) else None, keys)


def _check_proof(proof: Mapping[str, Any], seal: Any, keys: Mapping[str, Any]) -> ProofResult:
    record_id = None
    seq = None
    try:
        record_id = str(proof["record"]["id"])
        seq = int(seal["seq"])
        if proof.get("format") != PROOF_FORMAT:
            return ProofResult(False, record_id, seq, f"not a {PROOF_FORMAT} proof")
        salt = bytes.fromhex(proof["salt"]) if proof.get("salt") else None
        leaf = leaf_of(proof["record"], salt, proof.get("commitments") or None)
        path = [bytes.fromhex(h) for h in proof["path"]]
        size = int(proof["tree_size"])
        root = _merkle.root_from_path(leaf.hash, int(proof["leaf_index"]), size, path)
        key = keys.get(seal["key_id"])
        if leaf.problem:
            problem: str | None = leaf.problem
        elif root is None or root.hex() != seal["root"] or size != seal["size"]:
            problem = "the record does not hash to the seal's root (modified, or a bad path)"
        elif key is None:
            problem = f"the seal is signed by key {seal['key_id']}, which was not given"
        elif not signature_ok(key, header_bytes(seal), seal["signature"]):
            problem = "the seal's signature does not match its contents"
        else:
            problem = None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return ProofResult(False, record_id, seq, f"malformed proof ({type(exc).__name__}: {exc})")
    return ProofResult(problem is None, record_id, seq, problem, leaf.erased)


def export_bundle(bind: Engine | str | None = None, *, organization: str) -> dict[str, Any]:
    """Return one organization's verifiable bundle: its records, their proofs, the seals.

    JSON-serializable. The bundle holds every seal header of the chain (roots and
    signatures only) and, for each of the organization's sealed records, an inclusion
    proof; nothing of other organizations' records beyond the hashes in the paths. The
    customer checks it with :func:`verify_bundle` and the public key alone. Thread-safe.

    Raises:
        ConfigurationError: no database.
    """
    with ledger_engine(bind, "export_bundle()") as ledger, ledger.engine.connect() as conn:
        t = ledger.t
        seals = conn.execute(select(t.seals).order_by(t.seals.c.seq)).mappings().all()
        proofs = _proofs(conn, t, t.seal_leaves.c.organization_id == organization)
    for proof in proofs:
        proof["seal"] = proof["seal"]["seq"]  # the bundle lists each seal once
    return {
        "format": BUNDLE_FORMAT,
        "organization": organization,
        "seals": [_seal_json(dict(s)) for s in seals],
        "proofs": proofs,
    }


def write_bundle(out: TextIO, bind: Engine | str | None = None, *, organization: str) -> int:
    """Write :func:`export_bundle`'s JSON to *out* one proof at a time; return the proofs.

    The same bundle, in constant memory (one seal's tree at a time): for large exports.
    """
    count = 0
    with ledger_engine(bind, "write_bundle()") as ledger, ledger.engine.connect() as conn:
        t = ledger.t
        seals = conn.execute(select(t.seals).order_by(t.seals.c.seq)).mappings().all()
        head = {"format": BUNDLE_FORMAT, "organization": organization}
        out.write(json.dumps(head)[:-1] + ', "seals": ')
        out.write(json.dumps([_seal_json(dict(s)) for s in seals]))
        out.write(', "proofs": [')
        for proof in iter_proofs(conn, t, t.seal_leaves.c.organization_id == organization):
            proof["seal"] = proof["seal"]["seq"]
            out.write((",\n" if count else "\n") + json.dumps(proof))
            count += 1
        out.write("\n]}\n")
    return count


def verify_bundle(bundle: Mapping[str, Any], public_key: object) -> VerifyReport:
    """Check an organization's bundle offline: the seal chain, then every record's proof.

    Returns a VerifyReport (no database is read): bad seals and broken links, and by id
    each record whose proof fails or that belongs to another organization.
    """
    keys = public_keys(public_key, "verify_bundle(public_key=...)")
    seals = list(bundle.get("seals") or [])
    findings, _ = check_seals(seals, keys)
    by_seq = {s["seq"]: s for s in seals}
    organization = bundle.get("organization")
    erased = {}
    for proof in bundle.get("proofs") or []:
        result = _check_proof(proof, by_seq.get(proof.get("seal")), keys)
        if not result.ok:
            findings.append(Finding("modified", result.record_id, result.seal, str(result.problem)))
        elif proof["record"].get("organization_id") != organization:
            findings.append(
                Finding(
                    "modified", result.record_id, result.seal, "belongs to another organization"
                )
            )
        elif result.erased:
            erased[str(result.record_id)] = result.erased
    return VerifyReport(
        records_checked=len(bundle.get("proofs") or []),
        seals_checked=len(seals),
        findings=tuple(findings),
        erased=erased,
        purged=(),
        purged_records=0,
        pending=0,
        late=(),
        organization=organization,
    )
