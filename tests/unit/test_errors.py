"""An error in the instrumentation is one WARNING line a person can act on.

The line names the decorated function (with where it is defined), the action and the field;
the traceback goes to DEBUG, and starts in the user's code (their property, their callable),
not in obs_sdk's frames or generated wrappers. The call itself is never affected.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import pytest

import obs_sdk as obs

pytestmark = pytest.mark.swallows_internal_errors

HERE = str(Path(__file__).resolve())
ADA = obs.Actor.user("u_1")


class Report:
    name = "r.pdf"

    @property
    def size(self) -> int:
        raise KeyError("size is not known yet")


def line_of(function: Any) -> str:
    """``tests/unit/test_errors.py:<n>``: where a decorated function is (from the cwd)."""
    code = function.__wrapped__.__code__
    path = Path(code.co_filename)
    if path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return f"{path}:{code.co_firstlineno}"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "obs_sdk" and r.levelno == logging.WARNING]


def tracebacks_of(caplog: pytest.LogCaptureFixture) -> list[traceback.StackSummary]:
    return [
        traceback.extract_tb(r.exc_info[2])
        for r in caplog.records
        if r.name == "obs_sdk" and r.levelno == logging.DEBUG and r.exc_info
    ]


@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}", name=lambda call: call.result.title),
    metadata={"bytes": "{result.size}"},
)
def download(file_id: str) -> Report:
    return Report()


@obs.audited("folder.listed", emit_if=lambda call: call.args["folder"].missing)
def listing(folder: str) -> list[str]:
    return []


@obs.audited("report.made", metadata={"year": "{n:%Y}"})
def make_report(n: int) -> int:
    return n


class TestOneLine:
    def test_a_failing_field_names_the_function_the_action_and_the_field(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """One WARNING line per failing field, with no traceback; the record is still made."""
        obs.configure("sqlite://")
        with caplog.at_level(logging.WARNING, logger="obs_sdk"), obs.scope(actor=ADA):
            assert download("f_1").name == "r.pdf"  # the call is not affected
        warnings = warnings_of(caplog)
        assert len(warnings) == 2
        title, size = sorted((r.getMessage() for r in warnings), key=lambda m: "size" in m)
        where = f"@audited('file.downloaded') on download ({line_of(download)})"
        assert title.startswith(f"obs_sdk: {where}: field resource.name (")
        assert "AttributeError: 'Report' object has no attribute 'title'" in title
        assert size.startswith(f"obs_sdk: {where}: field metadata.bytes ('{{result.size}}')")
        assert "KeyError: 'size is not known yet'" in size
        for record in warnings:
            message = record.getMessage()
            assert "\n" not in message and record.exc_info is None
            assert "not affected" in message and "DEBUG" in message
        assert obs.flush(5.0)
        (record,) = obs.audit_log()
        assert (record.resource_id, record.resource_name, record.metadata) == (
            "f_1",
            None,
            {"bytes": None},
        )

    def test_emit_if_and_render_errors_name_their_function(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """emit_if (caller's thread) and a format spec that does not fit (dispatcher thread)."""
        obs.configure("sqlite://")
        with caplog.at_level(logging.WARNING, logger="obs_sdk"), obs.scope(actor=ADA):
            listing("docs")
            make_report(7)
            assert obs.flush(5.0)
        messages = [r.getMessage() for r in warnings_of(caplog)]
        assert any(
            m.startswith(
                f"obs_sdk: @audited('folder.listed') on listing ({line_of(listing)}): emit_if"
            )
            for m in messages
        ), messages
        assert any(
            m.startswith(
                f"obs_sdk: @audited('report.made') on make_report ({line_of(make_report)}): "
                "field metadata.year"
            )
            for m in messages
        ), messages

    def test_rate_limited_per_function(self, caplog: pytest.LogCaptureFixture) -> None:
        """The same failure again is counted, not logged; another function's is logged."""

        @obs.audited("other.read", metadata={"bytes": "{result.size}"})
        def other() -> Report:
            return Report()

        obs.configure("sqlite://")
        with caplog.at_level(logging.WARNING, logger="obs_sdk"), obs.scope(actor=ADA):
            for _ in range(3):
                download("f_1")
                other()
        messages = [r.getMessage() for r in warnings_of(caplog)]
        assert len(messages) == 3  # download's two fields, other's one
        assert obs.stats()["internal_errors"] == 9


class TestTracebackAtDebug:
    def test_the_traceback_starts_in_the_users_code(self, caplog: pytest.LogCaptureFixture) -> None:
        """At DEBUG each error's traceback begins at the user's own frame, not obs_sdk's."""
        obs.configure("sqlite://")
        with caplog.at_level(logging.DEBUG, logger="obs_sdk"), obs.scope(actor=ADA):
            download("f_1")
        stacks = tracebacks_of(caplog)
        assert len(stacks) == 2
        firsts = sorted((stack[0].filename, stack[0].name) for stack in stacks)
        assert firsts == [(HERE, "<lambda>"), (HERE, "size")]
        for stack in stacks:
            assert not any("obs_sdk" in frame.filename for frame in stack), stack

    def test_an_error_inside_obs_sdk_keeps_its_whole_traceback(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With no user frame in it (a bug of ours), the traceback is left whole."""
        from obs_sdk import _guard
        from obs_sdk._hotpath import _records

        try:
            _records.uuid7.replacing("not a UUID")  # type: ignore[arg-type]
        except AttributeError as exc:
            assert exc.__traceback__ is not None
            # As if caught inside obs_sdk: only obs_sdk's frames.
            error = exc.with_traceback(exc.__traceback__.tb_next)
        with caplog.at_level(logging.DEBUG, logger="obs_sdk"):
            _guard.count_error("dispatch", error)
        (stack,) = tracebacks_of(caplog)
        assert [Path(frame.filename).name for frame in stack] == ["_records.py"]
        (warning,) = [r.getMessage() for r in warnings_of(caplog)]
        assert warning.startswith("obs_sdk: internal error in dispatch: AttributeError: ")
