"""configure(console=True): every record and event, one readable line on stderr, as delivered.

And analytics events that go nowhere (no PostHog client, no actor in scope) are counted in
``stats()["unsent_events"]`` and said once, never dropped in silence.
"""

from __future__ import annotations

import collections
import datetime
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk._delivery._console import ConsoleSink
from obs_sdk.testing import SteppingClock, capture

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 1, 1, tzinfo=UTC)  # SteppingClock's default start
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ADA = obs.Actor.user("u_1", name="Ada Lovelace")


def at(ms: int) -> str:
    """The console's time of the record stamped START + ms (local time, like logging's)."""
    moment = (START + datetime.timedelta(milliseconds=ms)).astimezone()
    return moment.strftime("%H:%M:%S.%f")[:-3]


@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}", name="{result}"),
    metadata={"bytes": 2048},
)
def download(file_id: str) -> str:
    return "report 2026.pdf"


@obs.tracked("file_downloaded", properties={"file_id": "{file_id}"})
def downloaded(file_id: str) -> None: ...


class Boom(Exception):
    pass


@obs.audited("file.deleted", resource=obs.Resource("file", "{file_id}"), when="always")
def delete(file_id: str) -> None:
    raise Boom(file_id)


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert obs.flush(10.0)
    return capsys.readouterr().err.splitlines()


@pytest.fixture
def rich_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich is not installed (a None in sys.modules makes its import fail)."""
    for name in ("rich", "rich.console", "rich.text"):
        monkeypatch.setitem(sys.modules, name, None)


class TestLines:
    """What the console prints: one line per record, in delivery order."""

    def test_every_record_and_event_is_one_readable_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """time, kind, name, outcome, actor, tenant, resource, metadata; failures name the error."""
        obs.configure("sqlite://", console=True, clock=SteppingClock())
        with obs.scope(actor=ADA, organization="org_1", workspace="ws_1"):
            download("f_1")
            downloaded("f_1")
            with pytest.raises(Boom):
                delete("f_2")
        obs.identify_group("organization", "org_1", {"name": "Acme"})
        assert printed(capsys) == [
            f"{at(0)} audit file.downloaded success user:u_1 'Ada Lovelace' org=org_1 ws=ws_1 "
            "file:f_1 'report 2026.pdf' {bytes=2048}",
            f"{at(1)} event file_downloaded success u_1 org=org_1 ws=ws_1 {{file_id=f_1}}",
            f"{at(2)} audit file.deleted failure(Boom) user:u_1 'Ada Lovelace' org=org_1 "
            "ws=ws_1 file:f_2",
            f"{at(3)} group $groupidentify organization=org_1 {{name=Acme}}",
        ]

    def test_a_transactions_records_print_at_commit_never_on_rollback(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Printed as delivered: after the commit that stores them; a rollback prints nothing."""
        url = f"sqlite:///{tmp_path / 'app.db'}"
        engine = sa.create_engine(url)
        obs.configure(url, console=True)
        try:
            with obs.scope(actor=ADA), Session(engine) as session, obs.scope(session=session):
                session.execute(sa.text("SELECT 1"))
                obs.record_audit("kept")
                assert printed(capsys) == []
                session.commit()
            with obs.scope(actor=ADA), Session(engine) as session, obs.scope(session=session):
                session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
                obs.record_audit("dropped")
                session.rollback()
            assert [line.split()[2] for line in printed(capsys)] == ["kept"]
        finally:
            engine.dispose()

    def test_values_never_break_the_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Newlines, long text and nesting are shown escaped and cut: still one line each."""
        obs.configure("sqlite://", console=True)
        with obs.scope(actor=obs.Actor.system("cron")):
            obs.record_audit(
                "odd.values",
                resource=obs.Resource("note", "n\n1", name="x" * 500),
                metadata={"text": "two\nlines", "long": "y" * 500, "nested": {"a": [1, 2]}},
            )
        (line,) = printed(capsys)
        assert "system:'cron'" not in line and "system cron" in line
        assert "note:'n\\n1'" in line and "text='two\\nlines'" in line
        assert "y" * 60 not in line and "x" * 60 not in line and "…" in line
        assert "nested={a=[1, 2]}" in line

    def test_a_field_added_later_is_printed_generically(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A record with a field this view does not know prints it as name=value."""
        obs.configure("sqlite://", clock=SteppingClock())
        with capture() as cap, obs.scope(actor=ADA):
            obs.record_audit("doc.updated")
        (record,) = cap.records
        later = collections.namedtuple("Later", [*record._fields, "reviewer"])  # type: ignore[misc]
        newer = later(*record, {"title": ["a", "b"]})
        ConsoleSink().export([newer, record])
        lines = capsys.readouterr().err.splitlines()
        assert lines[0] == f"{at(0)} audit doc.updated success user:u_1 'Ada Lovelace' " + (
            "reviewer={title=['a', 'b']}"
        )
        assert lines[1] == lines[0].removesuffix(" reviewer={title=['a', 'b']}")


class TestSwitches:
    """console=True, OBS_SDK_CONSOLE, and rich being optional."""

    def test_off_by_default(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without console=True or the variable, nothing is printed."""
        obs.configure("sqlite://")
        with obs.scope(actor=ADA):
            download("f_1")
        assert printed(capsys) == []
        assert "console" not in obs.stats()["by_sink"]

    @pytest.mark.parametrize(("value", "on"), [("1", True), ("true", True), ("0", False)])
    def test_environment_variable(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        value: str,
        on: bool,
    ) -> None:
        """OBS_SDK_CONSOLE=1 turns the view on without touching the code; 0 leaves it off."""
        monkeypatch.setenv("OBS_SDK_CONSOLE", value)
        obs.configure("sqlite://")
        with obs.scope(actor=ADA):
            download("f_1")
        assert len(printed(capsys)) == (1 if on else 0)

    def test_a_bad_variable_is_a_configuration_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A value that is neither on nor off fails configure() and says what to set."""
        monkeypatch.setenv("OBS_SDK_CONSOLE", "verbose")
        with pytest.raises(obs.ConfigurationError, match=r"OBS_SDK_CONSOLE='verbose'.*set it to 1"):
            obs.configure("sqlite://")
        with pytest.raises(obs.ConfigurationError, match="console"):
            obs.configure("sqlite://", console="yes")  # type: ignore[arg-type]

    def test_colour_with_rich(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With rich (and a terminal, here forced), the same line in colour."""
        monkeypatch.setenv("FORCE_COLOR", "1")
        obs.configure("sqlite://", console=True, clock=SteppingClock())
        with obs.scope(actor=ADA):
            download("f_1")
        (line,) = printed(capsys)
        assert "\x1b[" in line
        assert ANSI.sub("", line) == (
            f"{at(0)} audit file.downloaded success user:u_1 'Ada Lovelace' "
            "file:f_1 'report 2026.pdf' {bytes=2048}"
        )

    @pytest.mark.usefixtures("rich_absent")
    def test_plain_text_without_rich(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without rich the console still works, in plain text (no escape codes, ever)."""
        monkeypatch.setenv("FORCE_COLOR", "1")
        obs.configure("sqlite://", console=True, clock=SteppingClock())
        with obs.scope(actor=ADA):
            download("f_1")
        assert printed(capsys) == [
            f"{at(0)} audit file.downloaded success user:u_1 'Ada Lovelace' "
            "file:f_1 'report 2026.pdf' {bytes=2048}"
        ]

    def test_rich_is_imported_only_for_the_console(self) -> None:
        """configure() without the console never imports rich; with it, it does."""
        code = (
            "import sys, obs_sdk as obs\n"
            "obs.configure('sqlite://'); print('rich' in sys.modules)\n"
            "obs.configure('sqlite://', console=True); print('rich' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["False", "True"]


class BlockedStderr:
    """A terminal that takes nothing until released (a paused pager, a full pipe)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.written: list[str] = []

    def write(self, text: str) -> int:
        self.released.wait(30)
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        self.released.wait(30)

    def isatty(self) -> bool:
        return False


class TestSlowTerminal:
    def test_a_blocked_terminal_never_delays_the_database(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """The console has its own queue: while it cannot write, the audit rows are stored."""
        terminal = BlockedStderr()
        monkeypatch.setattr(sys, "stderr", terminal)
        url = f"sqlite:///{tmp_path / 'obs.db'}"
        obs.configure(url, console=True)
        try:
            with obs.scope(actor=ADA):
                for i in range(20):
                    download(f"f_{i}")
            deadline = time.monotonic() + 30
            while obs.stats()["by_sink"]["database"]["delivered"] < 20:
                assert time.monotonic() < deadline, obs.stats()
                threading.Event().wait(0.01)
            assert len(obs.audit_log(sa.create_engine(url))) == 20
            assert terminal.written == []
        finally:
            terminal.released.set()
        assert obs.flush(10.0)
        assert "".join(terminal.written).count("file.downloaded") == 20


class TestUnsentEvents:
    """Analytics events that go nowhere are counted and said once."""

    def test_tracked_without_a_posthog_client(self, caplog: pytest.LogCaptureFixture) -> None:
        """No PostHog client: each event counted in unsent_events, one WARNING saying what to do."""
        obs.configure("sqlite://")
        with caplog.at_level(logging.WARNING, logger="obs_sdk"), obs.scope(actor=ADA):
            for i in range(3):
                downloaded(f"f_{i}")
            obs.track("exported")
        assert obs.stats()["unsent_events"] == 4
        (warning,) = [r.getMessage() for r in caplog.records]
        assert "'file_downloaded' was not sent: no PostHog client" in warning
        assert "configure(posthog=posthog.Posthog(" in warning

    def test_track_outside_a_scope(self, caplog: pytest.LogCaptureFixture) -> None:
        """No actor in scope: nothing is sent (no actor is invented), counted and said once.

        An explicit anonymous or system actor is a choice, not counted; allow_anonymous sends.
        """
        with capture() as cap, caplog.at_level(logging.WARNING, logger="obs_sdk"):
            obs.track("exported")
            downloaded("f_1")
            with obs.scope(actor=obs.Actor.anonymous()):
                obs.track("viewed")
            with obs.scope(actor=obs.Actor.system("cron")):
                obs.track("swept")
            obs.track("landed", allow_anonymous=True)
        assert [e["event"] for e in cap.events] == ["landed"]
        assert obs.stats()["unsent_events"] == 2
        (warning,) = [r.getMessage() for r in caplog.records]
        assert "'exported' was not sent: no actor in scope" in warning
        assert "allow_anonymous=True" in warning

    def test_the_console_shows_events_no_client_sends(
        self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """With the console and no PostHog client, events are printed, and still counted."""
        obs.configure("sqlite://", console=True)
        with caplog.at_level(logging.WARNING, logger="obs_sdk"), obs.scope(actor=ADA):
            downloaded("f_1")
            downloaded("f_2")
        assert [line.split()[1:3] for line in printed(capsys)] == [["event", "file_downloaded"]] * 2
        assert obs.stats()["unsent_events"] == 2
        assert len(caplog.records) == 1 and "no PostHog client" in caplog.records[0].getMessage()
