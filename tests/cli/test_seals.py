"""keygen, seal, verify, prove, export --with-proofs, erase-actor, purge through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from obs_sdk._ledger._tables import tables
from tests.cli.support import run, run_process, seed


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, str]:
    """A key pair from obs-sdk keygen: (private, public) file names."""
    prefix = str(tmp_path / "seal")
    assert run("keygen", "--out", prefix).exit_code == 0
    return prefix + ".key", prefix + ".pub"


def newest_id(url: str, *filters: str) -> str:
    result = run("-d", url, "query", "-n", "1", "--format", "jsonl", *filters)
    return str(json.loads(result.stdout)["id"])


def tamper(url: str, record_id: str) -> None:
    engine = sa.create_engine(url)
    audit = tables().audit
    with engine.begin() as conn:
        conn.execute(
            audit.update().where(audit.c.id == uuid.UUID(record_id)).values(action="x.edited")
        )
    engine.dispose()


class TestSealAndVerify:
    def test_seal_then_verify_passes(self, database_url: str, keys: tuple[str, str]) -> None:
        """seal reports how many it sealed; verify says OK and exits 0."""
        seed(database_url, 5)
        result = run("-d", database_url, "seal", "--key", keys[0])
        assert (result.exit_code, result.stdout) == (0, "sealed 5 records\n")
        result = run("-d", database_url, "verify", "--public-key", keys[1])
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.stdout.startswith("OK: 5 sealed records checked in 1 seals")
        assert "100%" in result.stderr  # the progress bar: records read of those sealed

    def test_verify_names_a_modified_record_and_exits_1(
        self, database_url: str, keys: tuple[str, str]
    ) -> None:
        """A record changed after sealing: named by id, exit code 1."""
        seed(database_url, 4)
        run("-d", database_url, "seal", "--key", keys[0])
        victim = newest_id(database_url)
        tamper(database_url, victim)
        result = run("-d", database_url, "verify", "--public-key", keys[1])
        assert result.exit_code == 1
        assert f"modified: record {victim}" in result.stdout

    def test_wrong_key_is_one_line(
        self, sqlite_url: str, keys: tuple[str, str], tmp_path: Path
    ) -> None:
        """A file that is no key: the library's message, one line, exit 2."""
        seed(sqlite_url, 1)
        bad = tmp_path / "bad.key"
        bad.write_text("not a key")
        result = run("-d", sqlite_url, "seal", "--key", str(bad))
        assert result.exit_code == 2
        assert len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr


class TestProofs:
    def test_proof_verifies_in_a_process_without_database(
        self, database_url: str, keys: tuple[str, str], tmp_path: Path
    ) -> None:
        """prove writes a proof that obs_sdk.verify_proof accepts in a separate process
        with no database; after the record is modified, its new proof fails."""
        seed(database_url, 3)
        run("-d", database_url, "seal", "--key", keys[0])
        record = newest_id(database_url)
        proof = tmp_path / "proof.json"
        assert run("-d", database_url, "prove", record, "-O", str(proof)).exit_code == 0
        check = (
            "import json, sys, obs_sdk; "
            "proof = json.load(open(sys.argv[1])); key = open(sys.argv[2], 'rb').read(); "
            "r = obs_sdk.verify_proof(proof, key); "
            "print(r.ok)"
        )
        env = {"OBS_DATABASE_URL": ""}
        ok = subprocess.run(
            [sys.executable, "-c", check, str(proof), keys[1]],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        assert ok.stdout == "True\n"
        cli = run_process("verify", "--proof", str(proof), "--public-key", keys[1], env=env)
        assert (cli.returncode, cli.stdout) == (0, f"proof of record {record}: OK\n")

        tamper(database_url, record)
        run("-d", database_url, "prove", record, "-O", str(proof))
        cli = run_process("verify", "--proof", str(proof), "--public-key", keys[1], env=env)
        assert cli.returncode == 1
        assert "FAILED" in cli.stdout

    def test_organization_bundle_holds_only_that_organization(
        self, database_url: str, keys: tuple[str, str], tmp_path: Path
    ) -> None:
        """export --organization X --with-proofs: X's records only, verified offline."""
        seed(database_url, 6)
        run("-d", database_url, "seal", "--key", keys[0])
        bundle = tmp_path / "bundle.json"
        result = run(
            "-d", database_url, "export", "-o", "org_acme", "--with-proofs", "-O", str(bundle)
        )
        assert result.exit_code == 0, result.stderr
        data = json.loads(bundle.read_text())
        assert {p["record"]["organization_id"] for p in data["proofs"]} == {"org_acme"}
        assert len(data["proofs"]) == 3
        assert "org_other" not in bundle.read_text()
        cli = run_process(
            "verify", "--bundle", str(bundle), "--public-key", keys[1], env={"OBS_DATABASE_URL": ""}
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert cli.stdout.startswith("OK: 3 sealed records of organization org_acme")

    def test_bundle_is_streamed_in_flat_memory(
        self, sqlite_url: str, keys: tuple[str, str], tmp_path: Path
    ) -> None:
        """Five times the seals and records, about the same peak: one seal's tree at a time."""

        def seal_rounds(rounds: int) -> None:
            for _ in range(rounds):
                seed(sqlite_url, 200, start=next_record[0])
                next_record[0] += 200
                run("-d", sqlite_url, "seal", "--key", keys[0])

        def bundle_peak() -> int:
            bundle = tmp_path / "bundle.json"
            tracemalloc.start()
            try:
                result = run(
                    "-d", sqlite_url, "export", "-o", "org_acme", "--with-proofs", "-O", str(bundle)
                )
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert result.exit_code == 0, result.stderr
            return peak

        next_record = [0]
        seal_rounds(2)
        bundle_peak()  # warm: imports and first-use caches are not the bundle's
        small = bundle_peak()
        seal_rounds(8)
        large = bundle_peak()
        assert len(json.loads((tmp_path / "bundle.json").read_text())["proofs"]) == 1000
        assert large < 1.5 * small, (small, large)

    def test_a_bundle_cut_short_never_replaces_the_file(
        self, sqlite_url: str, keys: tuple[str, str], tmp_path: Path
    ) -> None:
        """An export that fails mid-stream leaves the last whole bundle, and no partial file."""
        for start in (0, 4):
            seed(sqlite_url, 4, start=start)
            run("-d", sqlite_url, "seal", "--key", keys[0])
        bundle = tmp_path / "bundle.json"
        args = ("-d", sqlite_url, "export", "-o", "org_acme", "--with-proofs", "-O", str(bundle))
        assert run(*args).exit_code == 0
        whole = bundle.read_text()
        engine = sa.create_engine(sqlite_url)
        with engine.begin() as conn:  # the second seal's header goes: its proofs cannot be built
            conn.execute(sa.text("DELETE FROM obs_seals WHERE seq = 2"))
        engine.dispose()
        result = run(*args)
        assert result.exit_code != 0
        assert bundle.read_text() == whole
        assert [p.name for p in tmp_path.iterdir() if "bundle" in p.name] == ["bundle.json"]

    def test_with_proofs_needs_an_organization(self, sqlite_url: str) -> None:
        """A bundle is one organization's: without --organization, say so."""
        result = run("-d", sqlite_url, "export", "--with-proofs")
        assert result.exit_code == 2
        assert "--with-proofs needs --organization ORG" in result.stderr


class TestErasureAndRetention:
    def test_erase_actor_then_verify_passes(self, database_url: str, keys: tuple[str, str]) -> None:
        """erase-actor --yes erases the fields; verify still passes and reports them."""
        seed(database_url, 6)
        run("-d", database_url, "seal", "--key", keys[0])
        result = run("-d", database_url, "erase-actor", "u_1", "--yes")
        assert result.stdout == "erased the personal fields of 2 records of actor u_1\n"
        result = run("-d", database_url, "verify", "--public-key", keys[1])
        assert result.exit_code == 0, result.stdout
        assert "2 records have erased personal fields" in result.stdout
        rows = run("-d", database_url, "query", "--actor", "u_1", "--format", "jsonl").stdout
        assert "ada@example.com" not in rows

    def test_erase_asks_first(self, sqlite_url: str) -> None:
        """Without --yes, answering no erases nothing."""
        seed(sqlite_url, 3)
        result = run("-d", sqlite_url, "erase-actor", "u_1", input="n\n")
        assert result.exit_code == 1  # click's Abort
        rows = run("-d", sqlite_url, "query", "--actor", "u_1", "--format", "jsonl").stdout
        assert "ada@example.com" in rows

    def test_purge_then_verify_reports_the_range(
        self, database_url: str, keys: tuple[str, str]
    ) -> None:
        """purge deletes sealed records older than the cutoff; verify reports them purged."""
        seed(database_url, 4)
        run("-d", database_url, "seal", "--key", keys[0])
        result = run("-d", database_url, "purge", "--older-than", "0s", "--yes")
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("purged 4 records older than ")
        result = run("-d", database_url, "verify", "--public-key", keys[1])
        assert result.exit_code == 0, result.stdout
        assert "purged: 4 records of seals 1-1" in result.stdout
