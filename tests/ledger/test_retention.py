"""Erasure and retention keep the proof: verify passes and says what was erased or purged."""

from __future__ import annotations

import datetime
import glob
import multiprocessing
from pathlib import Path

import pytest
import sqlalchemy as sa

import obs_sdk as obs
from obs_sdk._seals._erasure import erase_actor
from obs_sdk._seals._proof import prove, verify_proof
from obs_sdk._seals._retention import purge_audit
from obs_sdk._seals._seal import seal
from obs_sdk._seals._verify import verify
from tests.ledger.helpers import db_id, execute, ids, sealing_writer, write

Key = tuple[bytes, bytes]


def file_bytes(database: str) -> bytes:
    """Every byte SQLite keeps for *database*: the file, its WAL and its shared memory."""
    return b"".join(Path(p).read_bytes() for p in sorted(glob.glob(database + "*")))


class TestErasure:
    """erase_actor() removes the personal fields; the seals still verify."""

    def test_erase_then_verify_passes(self, engine: sa.Engine, key: Key) -> None:
        """Erased fields are reported as erased; other actors' records are untouched."""
        write(6, actor="u_ada")
        write(4, actor="u_bob")
        seal(key=key[0])
        write(2, actor="u_ada", start=6)  # not sealed yet at erasure
        assert erase_actor("u_ada") == 8
        report = verify(public_key=key[1])
        assert report.ok, report.summary()
        assert len(report.erased) == 6
        assert set(next(iter(report.erased.values()))) == {
            "actor_name",
            "actor_email",
            "ip",
            "user_agent",
        }
        assert seal(key=key[0]) == 2
        assert verify(public_key=key[1]).ok
        bob = obs.audit_log(engine, actor_id="u_bob")
        assert {r.actor_email for r in bob} == {"u_bob@example.com"}
        proof = prove(str(obs.audit_log(engine, actor_id="u_ada", order="asc")[0].id))
        assert "u_ada@example.com" not in str(proof)
        assert verify_proof(proof, key[1]).erased == (
            "actor_email",
            "actor_name",
            "ip",
            "user_agent",
        )

    def test_erased_email_gone_from_the_file(self, sqlite_url: str, key: Key) -> None:
        """After erasure the email's bytes appear nowhere in the SQLite files."""
        obs.configure(sqlite_url, handle_signals=False)
        write(50, actor="u_gone")
        write(5, actor="u_kept")
        seal(key=key[0])
        database = sqlite_url.removeprefix("sqlite:///")
        assert b"u_gone@example.com" in file_bytes(database)
        erase_actor("u_gone")
        assert b"u_gone@example.com" not in file_bytes(database)
        assert b"u_kept@example.com" in file_bytes(database)
        assert verify(public_key=key[1]).ok

    def test_value_removed_without_erasure_is_found(self, engine: sa.Engine, key: Key) -> None:
        """Nulling an email by hand (its salt still there) is a modification, not an erasure."""
        write(3)
        seal(key=key[0])
        record = ids(engine)[1]
        execute(
            engine,
            "UPDATE obs_audit_log SET actor_email = NULL WHERE id = :id",
            id=db_id(engine, record),
        )
        assert verify(public_key=key[1]).of_kind("modified") == [record]


class TestRetention:
    """purge_audit() deletes old seals' records; verify reports the range as purged."""

    def test_purge_then_verify_reports_purged(self, engine: sa.Engine, key: Key) -> None:
        """Purged records are not deletions; the next seal signs the purge."""
        write(10)
        seal(key=key[0])
        cutoff = datetime.datetime.now(datetime.timezone.utc)
        write(5, start=10)
        seal(key=key[0])
        assert purge_audit(older_than=cutoff) == 10
        report = verify(public_key=key[1])
        assert report.ok, report.summary()
        assert report.purged_records == 10 and report.records_checked == 5
        assert [(p.through_seal, p.records, p.signed) for p in report.purged] == [(1, 10, False)]
        assert "purged: 10 records of seals 1-1" in report.summary()
        seal(key=key[0])  # nothing new, but the purge gets signed
        assert [p.signed for p in verify(public_key=key[1]).purged] == [True]

    def test_deletion_beyond_the_purge_is_still_found(self, engine: sa.Engine, key: Key) -> None:
        """A record of a seal newer than the purged range, deleted, is a deletion."""
        write(4)
        seal(key=key[0])
        cutoff = datetime.datetime.now(datetime.timezone.utc)
        write(4, start=4)
        seal(key=key[0])
        purge_audit(older_than=cutoff)
        gone = ids(engine)[2]
        execute(engine, "DELETE FROM obs_audit_log WHERE id = :id", id=db_id(engine, gone))
        assert verify(public_key=key[1]).of_kind("deleted") == [gone]

    def test_bad_older_than(self, engine: sa.Engine) -> None:
        """A naive datetime or a negative age is a ConfigurationError."""
        with pytest.raises(obs.ConfigurationError, match="aware datetime"):
            purge_audit(older_than=datetime.datetime(2020, 1, 1))
        with pytest.raises(obs.ConfigurationError, match="negative"):
            purge_audit(older_than=datetime.timedelta(days=-1))


class TestBackgroundSealing:
    """configure(seal_key=, seal_every=) seals on its own thread, one process at a time."""

    def test_processes_writing_while_sealing(self, database_url: str, key: Key) -> None:
        """4 writer processes, each sealing in the background: 0 findings, nothing skipped."""
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=sealing_writer, args=(database_url, key[0], 750, w))
            for w in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        engine = sa.create_engine(database_url)
        try:
            seal(engine, key=key[0])  # what the last rounds left
            report = verify(engine, public_key=key[1])
            assert report.ok, report.summary()
            assert report.records_checked == 3000
            with engine.connect() as conn:
                seals = conn.execute(sa.text("SELECT count(*) FROM obs_seals")).scalar()
            assert seals > 1  # the background rounds sealed, not just the final seal()
        finally:
            engine.dispose()

    def test_seal_settings_checked_at_configure(self, sqlite_url: str, key: Key) -> None:
        """seal_key without seal_every, a bad interval or a bad key fail at configure()."""
        with pytest.raises(obs.ConfigurationError, match="go together"):
            obs.configure(sqlite_url, seal_key=key[0])
        with pytest.raises(obs.ConfigurationError, match="seal_every"):
            obs.configure(sqlite_url, seal_key=key[0], seal_every=0)
        with pytest.raises(obs.ConfigurationError, match="Ed25519 private key"):
            obs.configure(sqlite_url, seal_key=key[1], seal_every=1)

    def test_shutdown_stops_the_sealer(self, sqlite_url: str, key: Key) -> None:
        """The sealer thread runs while configured and is gone after shutdown()."""
        import threading

        obs.configure(sqlite_url, handle_signals=False, seal_key=key[0], seal_every=30)
        assert "obs-sdk-seal" in {t.name for t in threading.enumerate()}
        assert obs.shutdown(timeout=5)
        assert "obs-sdk-seal" not in {t.name for t in threading.enumerate()}
