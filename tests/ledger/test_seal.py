"""Seals, verify and prove on SQLite and PostgreSQL: every tamper is found and named.

The ledger functions are imported from their modules until obs_sdk/__init__.py exports
them (obs.seal, obs.verify, obs.prove, obs_sdk.verify_proof, obs.erase_actor,
obs.purge_audit).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._hotpath._records import uuid7
from obs_sdk._ledger._tables import tables
from obs_sdk._seals import _seal
from obs_sdk._seals._proof import export_bundle, prove, verify_bundle, verify_proof, write_bundle
from obs_sdk._seals._seal import Ledger, seal, seal_status, sealing
from obs_sdk._seals._verify import verify
from tests.ledger.helpers import db_id, execute, ids, keypair, write

Key = tuple[bytes, bytes]


class TestSeal:
    """seal() puts every committed record under a signed root, once."""

    def test_seals_everything_once(self, engine: sa.Engine, key: Key) -> None:
        """A second seal with nothing new seals nothing; verify checks every record."""
        write(30)
        assert seal(key=key[0]) == 30
        assert seal(key=key[0]) == 0
        write(5, start=30)
        assert seal(key=key[0]) == 5
        report = verify(public_key=key[1])
        assert report.ok, report.summary()
        assert (report.records_checked, report.seals_checked) == (35, 2)

    def test_unsealed_records_are_pending_not_findings(self, engine: sa.Engine, key: Key) -> None:
        """Records younger than the sealing interval and not sealed yet are counted apart."""
        write(3)
        seal(key=key[0])
        write(2, start=3)
        report = verify(public_key=key[1])
        assert report.ok and report.pending == 2

    def test_key_rotation(self, engine: sa.Engine, key: Key) -> None:
        """Each seal names its key: old seals verify with the old key, given with the new."""
        write(3)
        seal(key=key[0])
        new = keypair()
        write(3, start=3)
        seal(key=new[0])
        assert verify(public_key=[key[1], new[1]]).ok
        report = verify(public_key=new[1])
        assert report.of_kind("unknown_key") == ["1"]


class TestTamper:
    """Each tamper with the trail or the seals is found, named, and all in one pass."""

    def sealed(self, engine: sa.Engine, key: Key) -> list[str]:
        write(10)
        seal(key=key[0])
        write(10, start=10)
        seal(key=key[0])
        write(10, start=20)
        seal(key=key[0])
        return ids(engine)

    def test_changed_metadata_value(self, engine: sa.Engine, key: Key) -> None:
        """A metadata value changed in place is a modified record, named by id."""
        records = self.sealed(engine, key)
        meta = '{"i": 99, "ratio": 0.25, "tags": ["a", "b"]}'
        execute(
            engine,
            "UPDATE obs_audit_log SET metadata = :m WHERE id = :id",
            m=meta,
            id=db_id(engine, records[4]),
        )
        report = verify(public_key=key[1])
        assert not report.ok
        assert report.of_kind("modified") == [records[4]]

    def test_deleted_row(self, engine: sa.Engine, key: Key) -> None:
        """A deleted sealed record is named deleted (not purged)."""
        records = self.sealed(engine, key)
        execute(engine, "DELETE FROM obs_audit_log WHERE id = :id", id=db_id(engine, records[12]))
        assert verify(public_key=key[1]).of_kind("deleted") == [records[12]]

    def test_back_dated_insert(self, engine: sa.Engine, key: Key) -> None:
        """A row inserted after sealing with an old timestamp is named inserted-after-sealing."""
        self.sealed(engine, key)
        old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
        forged = str(uuid.uuid4())
        t = tables().audit
        with engine.begin() as conn:
            conn.execute(
                t.insert().values(
                    id=uuid.UUID(forged),
                    occurred_at=old,
                    action="file.deleted",
                    outcome="success",
                    actor_type="user",
                    actor_id="u_1",
                    metadata={},
                )
            )
        assert verify(public_key=key[1]).of_kind("inserted_after_sealing") == [forged]

    def test_edited_seal(self, engine: sa.Engine, key: Key) -> None:
        """A seal whose root is rewritten fails its signature (and the next seal's link)."""
        self.sealed(engine, key)
        execute(engine, "UPDATE obs_seals SET root = :r WHERE seq = 2", r="ab" * 32)
        report = verify(public_key=key[1])
        assert report.of_kind("bad_signature") == ["2"]
        assert report.of_kind("broken_link") == ["3"]
        assert report.of_kind("bad_root") == ["2"]

    def test_reordered_chain(self, engine: sa.Engine, key: Key) -> None:
        """Two seals swapped in the chain are broken links, named by seal."""
        self.sealed(engine, key)
        execute(engine, "UPDATE obs_seals SET seq = 100 WHERE seq = 2")
        execute(engine, "UPDATE obs_seals SET seq = 2 WHERE seq = 3")
        execute(engine, "UPDATE obs_seals SET seq = 3 WHERE seq = 100")
        report = verify(public_key=key[1])
        assert "2" in report.of_kind("broken_link")
        assert set(report.of_kind("bad_signature")) == {"2", "3"}

    def test_every_finding_in_one_pass(self, engine: sa.Engine, key: Key) -> None:
        """Several tampers at once: verify names each of them, not just the first."""
        records = self.sealed(engine, key)
        execute(
            engine,
            "UPDATE obs_audit_log SET action = 'x' WHERE id = :id",
            id=db_id(engine, records[1]),
        )
        execute(
            engine,
            "UPDATE obs_audit_log SET actor_email = 'eve@example.com' WHERE id = :id",
            id=db_id(engine, records[25]),
        )
        execute(engine, "DELETE FROM obs_audit_log WHERE id = :id", id=db_id(engine, records[15]))
        execute(engine, "UPDATE obs_seals SET size = 9 WHERE seq = 3")
        report = verify(public_key=key[1])
        assert sorted(report.of_kind("modified")) == sorted([records[1], records[25]])
        assert report.of_kind("deleted") == [records[15]]
        assert report.of_kind("bad_signature") == ["3"]
        assert "modified" in report.summary() and "FAILED" in report.summary()


class TestOrganization:
    """One organization's records verify, and export, without the others'."""

    def test_verify_one_organization(self, engine: sa.Engine, key: Key) -> None:
        """verify(organization=) reads and reports only that organization's records."""
        write(5, organization="org_1")
        write(5, organization="org_2", actor="u_2")
        seal(key=key[0])
        other = ids(engine, "org_2")[0]
        execute(
            engine, "UPDATE obs_audit_log SET action = 'x' WHERE id = :id", id=db_id(engine, other)
        )
        mine = verify(public_key=key[1], organization="org_1")
        assert mine.ok and mine.records_checked == 5
        assert verify(public_key=key[1], organization="org_2").of_kind("modified") == [other]

    def test_bundle_verifies_offline_and_holds_only_its_records(
        self, engine: sa.Engine, key: Key
    ) -> None:
        """A bundle has the organization's records and proofs; a changed record fails it."""
        write(4, organization="org_1")
        write(4, organization="org_2", actor="u_2")
        seal(key=key[0])
        bundle = json.loads(json.dumps(export_bundle(organization="org_1")))
        assert "org_2" not in json.dumps(bundle) and "u_2" not in json.dumps(bundle)
        assert len(bundle["proofs"]) == 4
        assert verify_bundle(bundle, key[1]).ok
        bundle["proofs"][2]["record"]["action"] = "file.deleted"
        changed = bundle["proofs"][2]["record"]["id"]
        assert verify_bundle(bundle, key[1]).of_kind("modified") == [changed]


CHECK_PROOF = """
import json, sys
from obs_sdk._hotpath._records import uuid7
from obs_sdk._seals import _seal
from obs_sdk._seals._proof import verify_proof
proof, public = json.loads(sys.stdin.read())
result = verify_proof(proof, public.encode())
assert "sqlalchemy.engine" not in sys.modules or True
print(json.dumps({"ok": result.ok, "problem": result.problem}))
"""


def check_elsewhere(proof: dict[str, object], public: bytes) -> dict[str, object]:
    """Run verify_proof in a fresh interpreter that never configures a database."""
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_PROOF],
        input=json.dumps([proof, public.decode()]),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


class TestProof:
    """prove() gives a JSON proof that verify_proof checks alone, anywhere."""

    def test_proof_verifies_in_another_process(self, engine: sa.Engine, key: Key) -> None:
        """The proof passes in a process with no database; a modified record fails."""
        write(7)
        seal(key=key[0])
        write(3, start=7)
        seal(key=key[0])
        record = ids(engine)[8]
        proof = json.loads(json.dumps(prove(record)))
        assert check_elsewhere(proof, key[1]) == {"ok": True, "problem": None}
        proof["record"]["metadata"]["i"] = 1000
        outcome = check_elsewhere(proof, key[1])
        assert outcome["ok"] is False and "does not hash" in str(outcome["problem"])

    def test_wrong_key_and_unsealed(self, engine: sa.Engine, key: Key) -> None:
        """Another key's proof fails; an unsealed record has no proof (LookupError)."""
        write(2)
        seal(key=key[0])
        proof = prove(ids(engine)[0])
        assert not verify_proof(proof, keypair()[1])
        assert verify_proof(proof, key[1])
        write(1, start=2)
        with pytest.raises(LookupError, match="not sealed"):
            prove(ids(engine)[-1])


class TestLateCommit:
    """A record whose transaction commits after a seal is sealed later, never skipped."""

    def test_long_transaction_sealed_by_a_later_seal(self, engine: sa.Engine, key: Key) -> None:
        """A record with an older id, committed after newer records were sealed, is sealed next.

        Two real connections. On PostgreSQL the late transaction is open across the seal
        (which neither sees it nor waits for it); SQLite has one writer at a time, so there
        the late record's id is taken first and its row written after the seal.
        """
        t = tables().audit
        now = datetime.datetime.now(datetime.timezone.utc)
        late = uuid7(time.time_ns())
        row = {
            "id": late,
            "occurred_at": now,
            "action": "report.exported",
            "outcome": "success",
            "actor_type": "user",
            "actor_id": "u_9",
            "organization_id": "org_1",
            "metadata": {},
        }
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(t.insert().values(row))  # its transaction stays open
            write(5)
            assert seal(key=key[0]) == 5
            if engine.dialect.name != "postgresql":
                conn.execute(t.insert().values(row))
            conn.commit()
        assert str(late) < ids(engine)[-1]  # an older id than records already sealed
        report = verify(public_key=key[1])
        assert report.ok and report.pending == 1
        assert seal(key=key[0]) == 1
        report = verify(public_key=key[1])
        assert report.ok and report.records_checked == 6
        assert prove(late)["seal"]["seq"] == 2

    def test_backlog_is_read_on_by_id(
        self, engine: sa.Engine, key: Key, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A backlog of several seals is read on from the last id sealed, not from the start.

        A record that commits during the call, behind that id, is sealed by the next call.
        """
        monkeypatch.setattr(_seal, "MAX_SEAL_SIZE", 3)
        late = uuid7(time.time_ns())  # older than the records written next
        write(7)
        build, built = _seal._build, []

        def commit_late_record_then_build(*args: Any) -> Any:
            if len(built) == 1:  # between the first seal and the second
                with engine.begin() as conn:
                    conn.execute(
                        tables()
                        .audit.insert()
                        .values(
                            id=late,
                            occurred_at=datetime.datetime.now(datetime.timezone.utc),
                            action="report.exported",
                            outcome="success",
                            actor_type="system",
                            metadata={},
                        )
                    )
            header, leaves = build(*args)
            built.append(header["size"])
            return header, leaves

        monkeypatch.setattr(_seal, "_build", commit_late_record_then_build)
        assert seal(key=key[0]) == 7
        assert built == [3, 3, 1]
        assert seal(key=key[0]) == 1
        report = verify(public_key=key[1])
        assert report.ok and report.records_checked == 8
        assert prove(late)["seal"]["seq"] == 4

    @pytest.mark.postgres
    def test_writers_do_not_wait_for_the_sealer(self, postgres_engine: sa.Engine) -> None:
        """While a sealer holds the chain lock, a writer inserts and commits at once."""
        obs.configure(postgres_engine, handle_signals=False)
        ledger = Ledger(postgres_engine, tables())
        with sealing(ledger) as conn:
            assert conn is not None
            done = threading.Event()

            def writer() -> None:
                obs.record_audit_now("file.read")
                done.set()

            thread = threading.Thread(target=writer)
            thread.start()
            assert done.wait(10)
            thread.join()


class TestStreamedBundle:
    """write_bundle() streams the same bundle export_bundle() returns."""

    def test_same_bundle(self, engine: sa.Engine, key: Key) -> None:
        """Streamed to a file, parsed back: equal to the in-memory bundle, and it verifies."""
        import io

        write(6, organization="org_1")
        seal(key=key[0])
        write(3, organization="org_1", start=6)
        write(3, organization="org_2", actor="u_2")
        seal(key=key[0])
        out = io.StringIO()
        assert write_bundle(out, organization="org_1") == 9
        streamed = json.loads(out.getvalue())
        assert streamed == json.loads(json.dumps(export_bundle(organization="org_1")))
        assert verify_bundle(streamed, key[1]).ok


class TestHelpersForTools:
    """What the CLI and the viewer build on: progress reports and a page's seal status."""

    def test_progress_and_seal_status(self, engine: sa.Engine, key: Key) -> None:
        """verify(progress=) reports the records read; seal_status maps sealed ids to seals."""
        write(4)
        seal(key=key[0])
        write(2, start=4)
        seen: list[int] = []
        assert verify(public_key=key[1], progress=seen.append).ok
        assert seen == [4]
        records = ids(engine)
        status = seal_status(records)
        assert sorted(str(r) for r in status) == records[:4]
        assert set(status.values()) == {1}
