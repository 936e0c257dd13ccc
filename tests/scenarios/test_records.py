"""Records as apps make them: the tenant from an argument, no actor, seeded processes (issue 14).

Each test is the shape that found its item:

- 5: a Stripe webhook handler (a system actor, no organization in the scope) and a job whose
  payload names the tenant wrote ``organization_id`` NULL: the organization could only come
  from the scope. ``organization=`` / ``workspace=`` on ``@audited``, ``@tracked``,
  ``record_audit`` and ``track`` win over the scope, as one unit.
- 6: a record made with no actor in scope was filed anonymous without a sign: it is counted
  in ``stats()["no_actor"]``, and ``configure(require_actor=True)`` warns once per action.
- 17: processes that call ``random.seed(same)`` made the same UUIDv7 ids, and the SQL
  sink's ``ON CONFLICT DO NOTHING`` then dropped records silently. Ids now come from the
  operating system's randomness, and an id that collides anyway is replaced and counted.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posthog
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.stripe import WebhookHandler
from tests.support.posthog_receiver import PosthogReceiver, as_legacy, make_client
from tests.support.stripe_signing import TEST_SECRET, event_payload, sign

ADA = obs.Actor.user("u_ada", name="Ada")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver() -> Iterator[PosthogReceiver]:
    with PosthogReceiver() as running:
        yield running


@pytest.fixture
def client(receiver: PosthogReceiver) -> Iterator[posthog.Posthog]:
    made = make_client(receiver, on_error=obs.posthog_on_error)
    yield made
    made.shutdown()


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    """An engine of the test's own (NullPool: it holds no connection between reads)."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def arrived(receiver: PosthogReceiver, count: int) -> list[dict[str, Any]]:
    """Wait for *count* events and return them in the /batch/ shape, whichever protocol."""
    return [as_legacy(e) for e in receiver.wait_for(count)]


def tenants(engine: sa.Engine, action: str) -> list[tuple[str | None, str | None]]:
    """(organization_id, workspace_id) of the action's records, oldest first."""
    records = obs.audit_log(engine, action=action, order="asc")
    return [(r.organization_id, r.workspace_id) for r in records]


class TestTenantFromArguments:
    """Issue 14, item 5: the organization arrives as an argument, not in the scope."""

    def test_stripe_handler_files_the_invoice_under_the_customers_organization(
        self, database_url: str
    ) -> None:
        """A webhook handler names the organization from the event; the scope has none.

        WebhookHandler opens a scope with the system actor "stripe" and no organization; the
        record joins the handler's transaction and is inserted at its commit.
        """
        engine = sa.create_engine(database_url)
        try:
            obs.configure(database=engine)

            @obs.audited(
                "invoice.paid",
                resource=obs.Resource("invoice", "{event.data.object.id}"),
                organization="{event.data.object.metadata.org}",
            )
            def invoice_paid(event: Any, session: Any) -> None: ...

            hooks = WebhookHandler(secret=TEST_SECRET, sessionmaker=sessionmaker(engine))
            hooks.on("invoice.paid")(invoice_paid)
            invoice = {
                "id": "in_1",
                "object": "invoice",
                "customer": "cus_1",
                "metadata": {"org": "org_acme"},
            }
            body = event_payload("evt_1", "invoice.paid", invoice)
            assert hooks.handle(body, sign(body, TEST_SECRET)).status == 200
            assert obs.flush()
            (record,) = obs.audit_log(engine, action="invoice.paid")
            assert (
                record.actor_type,
                record.actor_name,
                record.resource_id,
                record.organization_id,
                record.workspace_id,
            ) == ("system", "stripe", "in_1", "org_acme", None)
        finally:
            engine.dispose()

    def test_a_jobs_payload_names_the_tenant(self, database_url: str, reader: sa.Engine) -> None:
        """Templates and callables over the arguments replace the scope's pair as one unit.

        Given both, both land; given one, the other is NULL (never the scope's); given
        neither (both render to None), the scope's pair stands. Queued records: on SQLite
        the database sink renders its rows alone, without AuditRecords.
        """
        obs.configure(database=database_url)

        @obs.audited(
            "export.ran",
            organization="{payload[org]}",
            workspace=lambda call: call.args["payload"].get("ws"),
        )
        def run_export(payload: dict[str, Any]) -> None: ...

        worker = obs.Actor.system("worker")
        with obs.scope(actor=worker, workspace="ws_scope", organization="org_scope"):
            run_export({"org": "org_a", "ws": "ws_a"})
            run_export({"org": "org_b"})
            run_export({"org": None})
        assert obs.flush()
        assert tenants(reader, "export.ran") == [
            ("org_a", "ws_a"),
            ("org_b", None),
            ("org_scope", "ws_scope"),
        ]

    def test_tracked_groups_follow_the_argument(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """``@tracked(organization=...)``: PostHog's $groups carry the argument's organization.

        The scope's workspace does not ride along with another organization (one unit); an
        argument of None leaves the scope's pair.
        """
        obs.configure(database=sqlite_url, posthog=client)

        @obs.tracked("seat_added", properties={"seat": "{seat}"}, organization="{org_id}")
        def add_seat(seat: int, org_id: str | None) -> None: ...

        with obs.scope(actor=ADA, workspace="ws_home", organization="org_home"):
            add_seat(1, "org_billing")
            add_seat(2, None)
        assert obs.flush()
        events = sorted(arrived(receiver, 2), key=lambda e: e["properties"]["seat"])
        assert [e["properties"]["$groups"] for e in events] == [
            {"organization": "org_billing"},
            {"workspace": "ws_home", "organization": "org_home"},
        ]

    def test_record_audit_and_track_take_the_tenant(
        self,
        database_url: str,
        reader: sa.Engine,
        client: posthog.Posthog,
        receiver: PosthogReceiver,
    ) -> None:
        """The hand-written calls take plain values; they win over the scope as one unit."""
        obs.configure(database=database_url, posthog=client)
        with obs.scope(actor=ADA, workspace="ws_home"):
            obs.record_audit("customer.synced", organization="org_9")
            obs.record_audit_now("key.shown", workspace="ws_7", organization="org_7")
            obs.record_audit("customer.viewed")
            obs.track("customer_synced", organization="org_9")
        assert obs.flush()
        assert tenants(reader, "customer.synced") == [("org_9", None)]
        assert tenants(reader, "key.shown") == [("org_7", "ws_7")]
        assert tenants(reader, "customer.viewed") == [(None, "ws_home")]
        (event,) = arrived(receiver, 1)
        assert event["properties"]["$groups"] == {"organization": "org_9"}

    def test_a_tenant_template_is_checked_when_decorating(self) -> None:
        """A field naming no parameter is a ConfigurationError naming the field."""
        with pytest.raises(obs.ConfigurationError, match="organization"):

            @obs.audited("invoice.paid", organization="{evnt.data}")
            def handler(event: Any) -> None: ...


class TestNoActor:
    """Issue 14, item 6: records filed anonymous because no actor was in scope."""

    def test_records_without_an_actor_are_counted(
        self, sqlite_url: str, client: posthog.Posthog, receiver: PosthogReceiver
    ) -> None:
        """No actor at all counts; an explicit anonymous actor, or an event not sent, does not."""
        obs.configure(database=sqlite_url, posthog=client)

        @obs.audited("report.viewed")
        def view() -> None: ...

        @obs.tracked("page_viewed", allow_anonymous=True)
        def page() -> None: ...

        view()  # no scope at all
        with obs.scope(organization="org_1"):  # a scope, but nobody signed in
            view()
            page()  # sent anonymous (the opt-in), with no actor
            obs.track("not_sent")  # no opt-in: nothing is sent, nothing counted
        with obs.scope(actor=obs.Actor.anonymous("ph_1")):  # said anonymous: not counted
            view()
            page()
        with obs.scope(actor=ADA):
            view()
        assert obs.flush()
        assert len(arrived(receiver, 2)) == 2
        assert obs.stats()["no_actor"] == 3

    def test_require_actor_warns_once_per_action(
        self, sqlite_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """configure(require_actor=True): a WARNING naming each action filed without an actor."""
        obs.configure(database=sqlite_url, require_actor=True)

        @obs.audited("invoice.voided")
        def void() -> None: ...

        @obs.audited("invoice.sent")
        def send() -> None: ...

        caplog.set_level(logging.WARNING, logger="obs_sdk")
        void()
        void()
        obs.record_audit("ledger.closed")
        with obs.scope(actor=ADA):
            send()
        assert obs.flush()
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "obs_sdk" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 2, warnings
        assert "'invoice.voided'" in warnings[0]
        assert "'ledger.closed'" in warnings[1]
        assert obs.stats()["no_actor"] == 3

    def test_no_warning_unless_required(
        self, sqlite_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """By default a record without an actor is counted, not logged."""
        obs.configure(database=sqlite_url)
        caplog.set_level(logging.WARNING, logger="obs_sdk")
        obs.record_audit("cache.cleared")
        assert obs.flush()
        assert [r for r in caplog.records if r.name == "obs_sdk"] == []
        assert obs.stats()["no_actor"] == 1

    @pytest.mark.parametrize("value", ["yes", 1, None])
    def test_require_actor_takes_a_bool(self, sqlite_url: str, value: Any) -> None:
        """Anything but True or False is a ConfigurationError naming the argument."""
        with pytest.raises(obs.ConfigurationError, match="require_actor"):
            obs.configure(database=sqlite_url, require_actor=value)


# Each process writes its records with a clock that steps alike in every process (a
# simulation's, or a test's), after random.seed(same): the shape that made equal ids.
_WRITER = textwrap.dedent(
    """
    import json, random, sys
    import obs_sdk as obs
    from obs_sdk.testing import IncrementingIds, SteppingClock

    url, process, count, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    options = {"id_factory": IncrementingIds()} if ids == "incrementing" else {}
    obs.configure(database=url, clock=SteppingClock(), **options)
    random.seed(20261205)
    with obs.scope(actor=obs.Actor.system("simulation")):
        for i in range(count):
            obs.record_audit("sim.step", metadata={"process": process, "i": i})
    assert obs.flush(60.0)
    print(json.dumps(obs.stats()))
    assert obs.shutdown(30.0)
    """
)


def write_in_processes(url: str, processes: int, count: int, ids: str) -> list[dict[str, Any]]:
    """Run *processes* writers at once; return each one's stats()."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    running = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, str(p), str(count), ids],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    stats = []
    for proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        stats.append(json.loads(out))
    return stats


def stored(engine: sa.Engine) -> tuple[int, int, set[tuple[int, int]]]:
    """(rows, distinct ids, (process, i) pairs) of the sim.step records."""
    records = []
    after = None
    while True:
        page = obs.audit_log(engine, action="sim.step", limit=10_000, after=after)
        if not page:
            break
        records.extend(page)
        after = page[-1].id
    pairs = {(r.metadata["process"], r.metadata["i"]) for r in records}
    return len(records), len({r.id for r in records}), pairs


class TestSeededProcesses:
    """Issue 14, item 17: equal ids from seeded processes never lose a record."""

    PROCESSES = 4
    COUNT = 600

    def test_every_record_of_seeded_processes_arrives(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Four processes seed random alike and step the same clock: every record arrives."""
        obs.create_tables(reader)
        stats = write_in_processes(database_url, self.PROCESSES, self.COUNT, "uuid7")
        total = self.PROCESSES * self.COUNT
        assert stored(reader) == (
            total,
            total,
            {(p, i) for p in range(self.PROCESSES) for i in range(self.COUNT)},
        )
        assert [s["internal_errors"] for s in stats] == [0] * self.PROCESSES

    def test_colliding_ids_are_replaced_and_counted(
        self, database_url: str, reader: sa.Engine
    ) -> None:
        """Ids that collide anyway (here: an id factory that repeats) are never dropped.

        Two processes make the ids 1..n each: every id is taken twice, so n records find
        theirs taken; each gets a new id, is written, and counted (logged as an internal
        error: the caller's operation was not affected).
        """
        obs.create_tables(reader)
        stats = write_in_processes(database_url, 2, self.COUNT, "incrementing")
        total = 2 * self.COUNT
        assert stored(reader) == (
            total,
            total,
            {(p, i) for p in range(2) for i in range(self.COUNT)},
        )
        assert sum(s["internal_errors"] for s in stats) == self.COUNT
        assert sum(s["delivered"] for s in stats) == total
