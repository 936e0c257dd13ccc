"""obs_sdk demo: a small file-sharing service, instrumented only with decorators.

Run it with ``scripts/demo`` (or ``python docs/examples/demo.py``). It uses the embedded
SQLite default: the app's tables and the obs_ tables share one database file, so audit
rows commit and roll back with the app's own transactions. At the end it prints the audit
trail read back with ``obs.audit_log`` and the dispatcher's counters.

It then meters uploads against a small storage quota (a refused upload, a delete, a
retried delete, a connector-synced document that is never charged) and takes Stripe webhook
deliveries: one signed ``invoice.paid`` delivered three times, a forged one, and a failing
handler that Stripe retries.

Set POSTHOG_API_KEY (and POSTHOG_HOST) to send the analytics events to PostHog; without
them the demo prints what would be sent. Log messages print as one line each, the way a
newcomer reads them; an application keeps its tracebacks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, String, create_engine, delete, func, select
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.stripe import WebhookHandler


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "app_files"
    id = Column(String, primary_key=True)
    owner_id = Column(String, nullable=False)
    name = Column(String, nullable=False)
    size = Column(Integer, nullable=False)
    public = Column(Integer, nullable=False, default=0)


class Payment(Base):
    __tablename__ = "app_payments"
    invoice_id = Column(String, primary_key=True)
    customer = Column(String, nullable=False)
    amount = Column(Integer, nullable=False)


@dataclass(frozen=True)
class Download:
    name: str
    size: int


class NotFound(Exception):
    pass


# --- the service: plain functions, instrumented only by decorators -----------------------


@obs.tracked("file_downloaded", properties={"file_id": "{file_id}", "bytes": "{result.size}"})
@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}", name="{result.name}"),
    metadata={"bytes": "{result.size}"},
)
def download(session: Session, file_id: str) -> Download:
    row = session.get(FileRow, file_id)
    if row is None:
        raise NotFound(file_id)
    return Download(row.name, row.size)


@obs.tracked("shared_file_downloaded", properties={"file_id": "{file_id}"}, allow_anonymous=True)
@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}"),
    # The owner goes into metadata: an anonymous download is never blamed on the owner.
    metadata=lambda call: {"via": "public_share", "shared_by_user_id": call.result["owner_id"]},
)
def download_shared(session: Session, file_id: str) -> dict[str, Any]:
    row = session.get(FileRow, file_id)
    if row is None or not row.public:
        raise NotFound(file_id)
    return {"owner_id": row.owner_id, "name": row.name}


# changes= puts the rows the call wrote (old and new values) into its record.
@obs.audited("file.renamed", resource=obs.Resource("file", "{file_id}"), changes=("FileRow",))
def rename(session: Session, file_id: str, name: str) -> None:
    row = session.get(FileRow, file_id)
    if row is None:
        raise NotFound(file_id)
    row.name = name


@obs.audited("files.exported", when="start", metadata={"organization": "{org_id}"})
def export_all(session: Session, org_id: str) -> list[str]:
    return [row.name for row in session.scalars(select(FileRow))]


@obs.tracked("file_deleted", properties={"file_id": "{file_id}"}, emit_if=lambda call: call.result)
@obs.audited(
    "file.deleted", resource=obs.Resource("file", "{file_id}"), emit_if=lambda call: call.result
)
def delete_file(session: Session, file_id: str) -> bool:
    return session.execute(delete(FileRow).where(FileRow.id == file_id)).rowcount > 0


QUOTA = 100_000  # bytes per organization: small, so the demo reaches it


@obs.audited(
    "file.uploaded", resource=obs.Resource("file", "{file_id}"), metadata={"bytes": "{size}"}
)
def upload(session: Session, file_id: str, name: str, size: int) -> None:
    with obs.metered_storage(session, object_id=file_id, bytes=size):
        session.add(
            FileRow(id=file_id, owner_id=obs.current_scope().actor.id, name=name, size=size)
        )


def sync_from_connector(session: Session, file_id: str, name: str, size: int) -> None:
    """A document mirrored from a connector: stored, but not charged to anyone's quota."""
    session.add(FileRow(id=file_id, owner_id="connector", name=name, size=size))


@obs.audited(
    "file.purged", resource=obs.Resource("file", "{file_id}"), emit_if=lambda call: call.result
)
def purge(session: Session, file_id: str) -> bool:
    with obs.metered_storage(session, object_id=file_id, release=True):
        return session.execute(delete(FileRow).where(FileRow.id == file_id)).rowcount > 0


# --- Stripe: verified, exactly-once webhook handling ---------------------------------------------

WEBHOOK_SECRET = "whsec_demo"


# A webhook has no request scope: the organization arrives in the event, so a template names it.
@obs.tracked("invoice_paid", properties={"amount": "{amount}"}, organization="{organization}")
@obs.audited(
    "invoice.paid",
    resource=obs.Resource("invoice", "{invoice_id}"),
    metadata={"amount": "{amount}"},
    organization="{organization}",
)
def record_payment(
    session: Session, invoice_id: str, customer: str, amount: int, organization: str | None
) -> None:
    session.add(Payment(invoice_id=invoice_id, customer=customer, amount=amount))


def stripe_delivery(
    event_id: str, event_type: str, obj: dict[str, Any], secret: str = WEBHOOK_SECRET
) -> tuple[bytes, str]:
    """Sign a payload the way Stripe does: t=<time>,v1=HMAC-SHA256(secret, "<t>.<body>")."""
    body = json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}
    ).encode()
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={stamp},v1={digest}"


# --- analytics: a real PostHog client when configured, else a stand-in ------------------------


class StandInPostHog:
    """Stands in for posthog.Posthog when no API key is set: accepts every event.

    configure(console=True) prints each event as it is delivered, so nothing is printed here.
    """

    def capture(self, event: str, **kwargs: Any) -> str | None:
        # posthog's capture() returns the event's uuid, None when its queue refused it.
        return str(kwargs.get("uuid") or event)

    def group_identify(self, group_type: str, group_key: str, **kwargs: Any) -> None:
        return None

    def flush(self, timeout_seconds: float | None = None) -> None:
        return None


def posthog_client() -> Any:
    key = os.environ.get("POSTHOG_API_KEY")
    if not key:
        return StandInPostHog()
    import posthog

    return posthog.Posthog(key, host=os.environ.get("POSTHOG_HOST"), on_error=obs.posthog_on_error)


# --- the story ------------------------------------------------------------------------------------


class OneLineFormatter(logging.Formatter):
    """A log record as one line: the message, then the exception's type and text, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"  log {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" ({type(error).__name__}: {error})"
        return line


def show_logs_as_one_line() -> None:
    handler = logging.StreamHandler(sys.stdout)  # in order with the story's own lines
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def section(title: str) -> None:
    print(f"\n== {title}")


def run(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'obs.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    print(f"database: {workdir / 'obs.db'} (app tables and obs_ tables together)")
    print(
        "analytics:",
        "PostHog" if os.environ.get("POSTHOG_API_KEY") else "a stand-in (no POSTHOG_API_KEY)",
    )
    # console=True prints every record and event on stderr as it is delivered, one line each.
    obs.configure(
        database=engine,
        posthog=posthog_client(),
        service="files-api",
        storage_quota=QUOTA,
        console=True,
    )

    with Session(engine) as session, session.begin():
        session.add_all(
            [
                FileRow(id="f_1", owner_id="u_ada", name="q3-report.pdf", size=48_213),
                FileRow(id="f_2", owner_id="u_ada", name="logo.png", size=9_876, public=1),
                FileRow(id="f_3", owner_id="u_bob", name="notes.txt", size=512),
            ]
        )

    ada = obs.Actor.user("u_ada", name="Ada", email="ada@example.com")
    request = {
        "ip": "203.0.113.5",
        "user_agent": "curl/8.5",
        "workspace": "ws_eng",
        "organization": "org_acme",
    }

    section("Ada downloads her report")
    with Session(engine) as session, obs.scope(actor=ada, request_id="req_1", **request):
        download(session, "f_1")
        obs.flush()

    section(
        "an anonymous visitor downloads through a public share (actor anonymous, owner in metadata)"
    )
    with (
        Session(engine) as session,
        obs.scope(actor=obs.Actor.anonymous("ph_visitor_7"), ip="198.51.100.9", request_id="req_2"),
    ):
        download_shared(session, "f_2")
        obs.flush()

    section("the admin API exports everything (system actor, recorded when the export starts)")
    with (
        Session(engine) as session,
        obs.scope(actor=obs.Actor.system("admin-api"), organization="org_acme", request_id="req_3"),
    ):
        export_all(session, "org_acme")

    section("a download of a missing file fails: no success row, the caller sees NotFound")
    with Session(engine) as session, obs.scope(actor=ada, request_id="req_4", **request):
        try:
            download(session, "f_404")
        except NotFound as exc:
            print(f"  caller got NotFound({exc}) unchanged")

    section("Bob deletes a file, then the transaction rolls back: no audit row, no event")
    bob = obs.Actor.user("u_bob", name="Bob")
    with (
        Session(engine) as session,
        obs.scope(actor=bob, session=session, request_id="req_5", **request),
    ):
        delete_file(session, "f_3")
        session.rollback()
        print("  rolled back")

    section("Bob deletes it again and commits: the audit row commits with the delete")
    with (
        Session(engine) as session,
        obs.scope(actor=bob, session=session, request_id="req_6", **request),
    ):
        delete_file(session, "f_3")
        delete_file(session, "f_3")  # already gone: emit_if drops the no-op
        session.commit()
        obs.flush()

    section("Ada renames a file: its record says what changed (changes=)")
    with (
        Session(engine) as session,
        obs.scope(actor=ada, session=session, request_id="req_7", **request),
    ):
        rename(session, "f_1", "q3-report-final.pdf")
        session.commit()
    obs.flush()
    (renamed,) = obs.audit_log(engine, action="file.renamed")
    print(f"  changes: {renamed.changes}")

    storage_story(engine)
    stripe_story(engine)

    obs.flush()
    section('the audit trail, oldest first: obs.audit_log(engine, order="asc")')
    print_trail(obs.audit_log(engine, limit=100, order="asc"))
    section("obs.stats()")
    stats = obs.stats()
    print("  " + ", ".join(f"{k}={v}" for k, v in stats.items() if k != "by_sink"))
    print("  by sink: " + ", ".join(f"{k}: {v}" for k, v in stats["by_sink"].items()))
    obs.shutdown()


def storage_story(engine: Any) -> None:
    ada = obs.Actor.user("u_ada", name="Ada")
    scope = {"actor": ada, "organization": "org_acme", "workspace": "ws_eng"}
    section(f"uploads are metered against the organization's quota ({QUOTA:,} bytes)")
    for file_id, size in [("up_1", 40_000), ("up_2", 50_000), ("up_3", 30_000)]:
        with Session(engine) as session, obs.scope(**scope):
            try:
                upload(session, file_id, f"{file_id}.bin", size)
                session.commit()
                print(f"  {file_id}: {size:,} bytes charged")
            except obs.QuotaExceeded as exc:
                session.rollback()
                # In the unit the quota was configured in (the message itself rounds to KiB).
                print(
                    f"  {file_id}: refused before anything was stored: {exc.used:,} bytes used"
                    f" of {exc.limit:,} bytes, {exc.requested:,} bytes more requested"
                )
    with Session(engine) as session, obs.scope(**scope):
        sync_from_connector(session, "sync_1", "from-drive.docx", 25_000)
        session.commit()
        print("  sync_1: 25,000 bytes synced from a connector, never charged")

    section("a delete gives back exactly what was charged; a retried delete changes nothing")
    for attempt in ("delete", "retried delete", "delete of the synced document"):
        file_id = "sync_1" if "synced" in attempt else "up_1"
        with Session(engine) as session, obs.scope(**scope):
            purge(session, file_id)
            session.commit()
        print(f"  {attempt} of {file_id}: usage now {obs.storage_usage('org_acme'):,} bytes")
    with Session(engine) as session:
        ledger = session.execute(
            select(func.coalesce(func.sum(obs.metadata().tables["obs_storage_objects"].c.bytes), 0))
        ).scalar_one()
        drift = obs.reconcile_storage(session)
    usage = obs.storage_usage("org_acme")
    print(f"  usage {usage:,} bytes == ledger sum {ledger:,} bytes; drift: {drift or 'none'}")


def stripe_story(engine: Any) -> None:
    hooks = WebhookHandler(secret=WEBHOOK_SECRET, sessionmaker=sessionmaker(engine))
    failures = {"count": 0}

    @hooks.on("invoice.paid")
    def invoice_paid(event: Any, session: Session) -> None:
        invoice = event["data"]["object"]
        obs.set_actor(obs.Actor.user(invoice["customer_owner"]))  # the customer's owner
        organization = invoice["metadata"]["organization"]
        record_payment(
            session, invoice["id"], invoice["customer"], invoice["amount_paid"], organization
        )

    @hooks.on("invoice.payment_failed")
    def payment_failed(event: Any, session: Session) -> None:
        failures["count"] += 1
        if failures["count"] == 1:
            raise ConnectionError("the billing service timed out")
        record_payment(session, event["data"]["object"]["id"], "cus_2", 0, None)

    invoice = {
        "id": "in_1",
        "customer": "cus_1",
        "customer_owner": "u_ada",
        "amount_paid": 4900,
        "metadata": {"organization": "org_acme"},
    }
    section("Stripe delivers one invoice.paid three times: one payment, one audit row, one event")
    body, signature = stripe_delivery("evt_1", "invoice.paid", invoice)
    for attempt in range(1, 4):
        result = hooks.handle(body, signature)
        print(f"  delivery {attempt}: {result.status} {result.body['status']}")

    section("a forged delivery is rejected with its reason, and records nothing")
    forged_body, forged_signature = stripe_delivery(
        "evt_2", "invoice.paid", invoice, secret="whsec_wrong"
    )
    result = hooks.handle(forged_body, forged_signature)
    print(f"  {result.status} {result.body['reason']}: {result.body['detail']}")

    section("a handler fails: 500 and nothing committed; Stripe's retry succeeds once")
    body, signature = stripe_delivery("evt_3", "invoice.payment_failed", {"id": "in_2"})
    for attempt in range(1, 4):
        result = hooks.handle(body, signature)
        print(f"  delivery {attempt}: {result.status} {result.body['status']}")
    with Session(engine) as session:
        print(f"  payments stored: {session.scalar(select(func.count()).select_from(Payment))}")


def print_trail(records: list[obs.AuditRecord]) -> None:
    # Sorted here, so the story reads in time order whichever order audit_log returns.
    records = sorted(records, key=lambda r: (r.occurred_at, str(r.id)))
    columns = [
        ("time", lambda r: r.occurred_at.strftime("%H:%M:%S.%f")[:-3]),
        ("action", lambda r: r.action),
        ("outcome", lambda r: r.outcome),
        ("actor", lambda r: f"{r.actor_type}:{r.actor_id or r.actor_name or '-'}"),
        ("resource", lambda r: f"{r.resource_type}:{r.resource_id}" if r.resource_type else "-"),
        ("org/ws", lambda r: f"{r.organization_id or '-'}/{r.workspace_id or '-'}"),
        ("ip", lambda r: r.ip or "-"),
        ("request", lambda r: r.request_id or "-"),
        ("metadata", lambda r: ", ".join(f"{k}={v}" for k, v in r.metadata.items()) or "-"),
    ]
    rows = [[str(get(r)) for _, get in columns] for r in records]
    widths = [
        max([len(name)] + [len(row[i]) for row in rows]) for i, (name, _) in enumerate(columns)
    ]
    print("  " + "  ".join(name.ljust(w) for (name, _), w in zip(columns, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> int:
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="obs-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "obs.db").unlink(missing_ok=True)
    show_logs_as_one_line()
    run(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
