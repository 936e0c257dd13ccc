"""Helpers of the CLI tests: a database with a known trail, and running the command."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from click.testing import CliRunner, Result

import obs_sdk as obs
from obs_sdk.cli._commands import cli

ORGS = ("org_acme", "org_other")
SCRIPT = "<script>alert('x')</script>"


def seed(url: str, n: int, *, start: int = 0) -> None:
    """Write *n* records: alternate organizations, actors u_0..u_2, file f_<i>, metadata i."""
    obs.configure(database=url, handle_signals=False)
    for i in range(start, start + n):
        actor = obs.Actor.user(f"u_{i % 3}", name="Ada", email="ada@example.com")
        with obs.scope(actor=actor, organization=ORGS[i % 2], ip="203.0.113.5"):
            obs.record_audit(
                "file.downloaded" if i % 4 else "file.deleted",
                resource=obs.Resource("file", f"f_{i}"),
                metadata={"i": i, "note": SCRIPT},
            )
    assert obs.flush(timeout=30)
    obs.shutdown()


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run ``obs-sdk ARGS`` in-process (click's CliRunner), stdout and stderr apart."""
    return CliRunner(env=env).invoke(cli, list(args), input=input, catch_exceptions=False)


def run_process(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m obs_sdk.cli ARGS`` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "obs_sdk.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **kwargs.pop("env", {})},
        **kwargs,
    )
