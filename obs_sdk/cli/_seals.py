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
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The public seal key (PEM) [env: OBS_SEAL_PUBLIC_KEY_FILE].",
)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        fail("seal keys need the cryptography package: pip install 'obs-sdk[cli]'")
    return serialization


def _private_key(path: Path) -> Any:
    serialization = _crypto()
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        fail(f"{path} is not a PEM private key; make one with: obs-sdk keygen")


def _public_key(path: Path) -> Any:
    serialization = _crypto()
    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except ValueError:
        fail(f"{path} is not a PEM public key; it is the .pub file obs-sdk keygen wrote")


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
    key = _private_key(key_file)
    bind = state().engine()
    result = _ledger.function("seal")(bind, key=key)
    _print_json(_jsonable(result))


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
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def verify(
    public_key_file: Path, organization: str | None, proof_file: Path | None, fmt: str
) -> None:
    """Recompute every seal and report every finding; exit 1 when there is any."""
    public_key = _public_key(public_key_file)
    if proof_file is not None:
        proof = json.loads(proof_file.read_text())
        import obs_sdk

        ok = _ledger.function("verify_proof", obs_sdk)(proof, public_key)
        click.echo("proof verified" if ok else "proof does NOT verify")
        raise SystemExit(0 if ok else EXIT_FOUND)
    bind = state().engine()
    report = _ledger.function("verify")(bind, public_key=public_key, organization=organization)
    _print_json(_jsonable(report)) if fmt == "json" else click.echo(str(report))
    if not getattr(report, "ok", True):
        raise SystemExit(EXIT_FOUND)


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
    if not yes:
        click.confirm(
            f"erase the personal fields of actor {actor_id!r}? This cannot be undone", abort=True
        )
    bind = state().engine()
    result = _ledger.function("erase_actor")(actor_id, bind)
    click.echo(f"erased actor {actor_id}: {result}")


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
    if not yes:
        click.confirm(
            f"delete every audit record made before {older_than.isoformat()}?", abort=True
        )
    bind = state().engine()
    deleted = _ledger.function("purge_audit")(bind, older_than=older_than)
    click.echo(f"purged {deleted} records made before {older_than.isoformat()}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "_asdict"):
        return value._asdict()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    return value
