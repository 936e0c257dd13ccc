"""Process targets for tests that start several interpreters at once (multiprocessing spawn)."""

from __future__ import annotations

from typing import Any

import obs_sdk as obs


def configure_in_step(urls: list[str], barrier: Any) -> None:
    """configure() each of *urls* in turn, starting each one with the other processes.

    The barrier lines the processes up before every configure(), so they all open the same
    fresh file in the same instant: the start of a deployment's workers.
    """
    for url in urls:
        barrier.wait(60)
        try:
            obs.configure(url, handle_signals=False)
        except BaseException:
            barrier.abort()  # the others fail at once instead of waiting out the barrier
            raise
        obs.shutdown(timeout=10)
