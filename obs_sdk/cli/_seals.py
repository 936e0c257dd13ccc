"""keygen, seal, verify, prove, erase-actor, purge: the commands over the sealed trail."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from obs_sdk.cli import _ledger
from obs_sdk.cli._app import EXIT_FOUND, command, fail, state
from obs_sdk.cli._filters import TIME

__all__ = ["erase_actor", "keygen", "prove", "purge", "seal", "verify"]

_KEY = click.option(
    "--key",
    "key_file",
    envvar="OBS_SEAL_KEY_FILE",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private seal key (PEM, from obs-sdk keygen) [env: OBS_SEAL_KEY_FILE].",
)
_PUBLIC_KEY = click.option(
    "--public-key",
    "public_key_file",
    envvar="OBS_SEAL_PUBLIC_KEY_FILE",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The public seal key (PEM); repeat it for every key in use after a rotation "
    "[env: OBS_SEAL_PUBLIC_KEY_FILE].",
)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        fail("seal keys need the cryptography package: pip install 'obs-sdk[cli]'")
    return serialization


def _keys(paths: tuple[Path, ...]) -> list[bytes]:
    """The PEM files' bytes: the library reads them (and says what is wrong with one)."""
    return [path.read_bytes() for path in paths]


def _confirmed(yes: bool, question: str, function: str, *args: Any, **kwargs: Any) -> Any:
    """Ask *question* unless --yes (no answer aborts), then run *function* on the database."""
    if not yes:
        click.confirm(question, abort=True)
    return _ledger.function(function)(*args, bind=state().engine(), **kwargs)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@command()
@click.option(
    "--out",
    default="obs-seal",
    show_default=True,
    metavar="PREFIX",
    help="Writes PREFIX.key (private, mode 600) and PREFIX.pub.",
)
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(out: str, force: bool) -> None:
    """Make an Ed25519 seal key pair: the private key seals, the public key verifies."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = Path(out + ".key"), Path(out + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not force:
            fail(f"{path} exists: choose another --out, or pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created with mode 600 from the start: never readable by others, not even briefly.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    click.echo(f"wrote {private_path} (keep it secret) and {public_path} (give it to verifiers)")


@command()
@_KEY
def seal(key_file: Path) -> None:
    """Seal every committed record not yet sealed (obs.seal)."""
    seal_ = _ledger.function("seal")
    bind = state().engine()
    with _status("sealing"):
        sealed = seal_(bind, key=key_file.read_bytes())
    click.echo(f"sealed {sealed:,} records")


@command()
@_PUBLIC_KEY
@click.option("--organization", "-o", help="Check only this organization's records.")
@click.option(
    "--proof",
    "proof_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check this inclusion proof (from obs-sdk prove) offline: no database.",
)
@click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check this organization bundle (from export --with-proofs) offline: no database.",
)
def verify(
    public_key_file: tuple[Path, ...],
    organization: str | None,
    proof_file: Path | None,
    bundle_file: Path | None,
) -> None:
    """Recompute every seal and report every finding; exit 1 when there is any.

    With --proof or --bundle, check that file instead, with the public key alone.
    """
    keys = _keys(public_key_file)
    if proof_file is not None:
        result = _ledger.function("verify_proof")(_read_json(proof_file), keys)
        click.echo(
            f"proof of record {result.record_id}: "
            + ("OK" if result.ok else f"FAILED: {result.problem}")
        )
        raise SystemExit(0 if result.ok else EXIT_FOUND)
    if bundle_file is not None:
        report = _ledger.function("verify_bundle")(_read_json(bundle_file), keys)
    else:
        verify_ = _ledger.function("verify")
        bind = state().engine()
        total = _sealed_count(bind, organization)
        with _verify_progress() as bar:
            task = bar.add_task("verify", total=total or None)
            report = verify_(
                bind,
                public_key=keys,
                organization=organization,
                progress=lambda read: bar.update(task, completed=read),
            )
            bar.update(task, completed=total)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(EXIT_FOUND)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        fail(f"{path} is not JSON ({exc}); pass the file obs-sdk wrote")


def _status(what: str) -> Any:
    """A spinner with the elapsed time on stderr while a long call runs."""
    from rich.console import Console

    return Console(stderr=True).status(f"{what}…")


def _sealed_count(bind: Any, organization: str | None) -> int:
    """How many sealed records verify() will read: the progress bar's total (one count)."""
    import sqlalchemy as sa

    from obs_sdk._ledger._tables import tables

    leaves = tables(state().prefix).seal_leaves
    query = sa.select(sa.func.count()).select_from(leaves)
    if organization is not None:
        query = query.where(leaves.c.organization_id == organization)
    with bind.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _verify_progress() -> Any:
    """A bar on stderr: sealed records read against the count of sealed records."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("verifying seals and records"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


@command()
@click.argument("record_id")
@click.option(
    "--output",
    "-O",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the proof here (else stdout).",
)
def prove(record_id: str, output: Path | None) -> None:
    """Print the JSON inclusion proof of one record, with its signed seal."""
    bind = state().engine()
    proof = _ledger.function("prove")(record_id, bind)
    text = json.dumps(proof, indent=2, sort_keys=True, default=str) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)


@command(name="erase-actor")
@click.argument("actor_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase_actor(actor_id: str, yes: bool) -> None:
    """Erase one actor's personal fields (name, email, ip, user agent); seals still verify."""
    question = f"erase the personal fields of actor {actor_id!r}? This cannot be undone"
    erased = _confirmed(yes, question, "erase_actor", actor_id)
    click.echo(f"erased the personal fields of {erased:,} records of actor {actor_id}")


@command()
@click.option(
    "--older-than",
    required=True,
    type=TIME,
    metavar="TIME",
    help="Delete records made before this time (an age like 400d, or ISO 8601).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(older_than: Any, yes: bool) -> None:
    """Delete old records in batches; their seals stay, so verify reports them as purged."""
    question = f"delete every audit record made before {older_than.isoformat()}?"
    deleted = _confirmed(yes, question, "purge_audit", older_than=older_than)
    click.echo(f"purged {deleted:,} records older than {older_than.isoformat()}")
