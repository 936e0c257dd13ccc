"""``python -m obs_sdk.cli``: the same as the ``obs-sdk`` console script."""

from __future__ import annotations

from obs_sdk.cli import main

main()
