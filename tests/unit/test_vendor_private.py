"""obs_sdk/_vendor_private.py: the private parts of dependencies, pinned to checked versions."""

from __future__ import annotations

import importlib.metadata

import pytest
from opentelemetry import context as otel_context

from obs_sdk import _vendor_private
from obs_sdk._vendor_private import (
    CHECKED_AGAINST,
    SUPPRESS_INSTRUMENTATION_KEY,
    fast_context_getter,
)


@pytest.mark.parametrize("distribution", sorted(CHECKED_AGAINST))
def test_installed_major_version_is_the_one_checked(distribution: str) -> None:
    """A new major version fails here: read obs_sdk/_vendor_private.py against it first."""
    installed = importlib.metadata.version(distribution)
    major = int(installed.split(".")[0])
    assert major == CHECKED_AGAINST[distribution], (
        f"{distribution} {installed} is installed; obs_sdk/_vendor_private.py uses private "
        f"names of {distribution} {CHECKED_AGAINST[distribution]}.x. Check each one still "
        "exists and means the same (or has gained a public way), then update CHECKED_AGAINST."
    )


def test_the_fast_getter_is_the_runtime_contextvar_and_follows_attach_detach() -> None:
    getter = fast_context_getter()
    assert getter is not otel_context.get_current, "the private runtime var is gone: see module"
    ctx = otel_context.set_value("obs-test", 1)
    token = otel_context.attach(ctx)
    try:
        assert getter() is ctx is otel_context.get_current()
    finally:
        otel_context.detach(token)
    assert getter() is otel_context.get_current()


def test_without_the_runtime_var_the_public_getter_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(otel_context, "_RUNTIME_CONTEXT")
    assert fast_context_getter() is otel_context.get_current


def test_the_suppression_key_is_otels_own() -> None:
    """The key OTel's instrumentations check (absent: the fallback string is used)."""
    assert SUPPRESS_INSTRUMENTATION_KEY == otel_context._SUPPRESS_INSTRUMENTATION_KEY
    assert _vendor_private.__all__ == [
        "CHECKED_AGAINST",
        "SUPPRESS_INSTRUMENTATION_KEY",
        "fast_context_getter",
    ]
