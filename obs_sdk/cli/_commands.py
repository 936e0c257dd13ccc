"""The command group with every command registered (importing a module registers it)."""

from __future__ import annotations

from obs_sdk.cli import _export, _read, _seals
from obs_sdk.cli._app import cli

__all__ = ["cli"]

_REGISTERED = (_export, _read, _seals)
