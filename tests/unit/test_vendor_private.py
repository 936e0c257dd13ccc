"""obs_sdk/_vendor_private.py: the private parts of dependencies, pinned to checked versions."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import pytest
from opentelemetry import context as otel_context
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm import base as orm_base

from obs_sdk._vendor_private import (
    CHECKED_AGAINST,
    POSTHOG_FLUSH_BUDGET,
    POSTHOG_UPLOAD_ERROR,
    SA_CLASS_MANAGER,
    SA_INSTANCE_STATE,
    SUPPRESS_INSTRUMENTATION_KEY,
    fast_context_getter,
    otel_logs_api,
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


def test_the_logs_api_has_what_the_otel_sink_uses() -> None:
    logs = otel_logs_api()
    for name in ("LoggerProvider", "SeverityNumber", "get_logger", "get_logger_provider"):
        assert hasattr(logs, name), f"opentelemetry._logs has no {name} any more"


def test_sqlalchemy_names_its_instrumentation_attributes_so() -> None:
    """The attribute names, and what they hold on a real mapped class and instance."""
    assert (SA_CLASS_MANAGER, SA_INSTANCE_STATE) == (
        orm_base.DEFAULT_MANAGER_ATTR,
        orm_base.DEFAULT_STATE_ATTR,
    )

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)

    manager = getattr(Item, SA_CLASS_MANAGER)
    assert isinstance(manager, dict) and "id" in manager
    item = Item(id=1)
    assert getattr(vars(item)[SA_INSTANCE_STATE], "key", "missing") is None  # transient
    with Session(create_engine("sqlite://")) as session:
        Base.metadata.create_all(session.bind)  # type: ignore[arg-type]
        session.add(item)
        session.flush()
        assert vars(item)[SA_INSTANCE_STATE].key is not None  # persistent


@pytest.mark.parametrize(
    ("message", "where"),
    [(POSTHOG_UPLOAD_ERROR, "posthog.consumer"), (POSTHOG_FLUSH_BUDGET, "posthog.client")],
)
def test_posthog_still_logs_the_messages_the_sink_recognises(message: str, where: str) -> None:
    source = inspect.getsource(importlib.import_module(where))
    assert message in source, f"{where} no longer logs {message!r}: see _posthog_log.py"
