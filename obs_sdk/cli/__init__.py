"""The ``obs-sdk`` command line: query, tail, export, seal and verify the audit trail.

``main()`` is the console script. click and rich are imported by ``main()`` (through the
command modules), never by ``import obs_sdk``; without them, ``main()`` says which extra to
install.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run the ``obs-sdk`` command line (the ``obs-sdk`` console script)."""
    try:
        from obs_sdk.cli._commands import cli
    except ImportError as exc:
        missing = exc.name or "click"
        if missing.split(".")[0] not in {"click", "rich"}:
            raise
        print(
            f"obs-sdk: the command line needs {missing}: pip install 'obs-sdk[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    cli.main(args=argv, prog_name="obs-sdk")
