"""obs_sdk demo web app: file sharing on Starlette, instrumented only by decorators.

Run it with ``scripts/webapp`` (or ``python docs/examples/webapp.py [--port 8000]``), then
open http://127.0.0.1:8000/ for curl commands to try and http://127.0.0.1:8000/audit for
the audit trail they leave.

No route body calls obs_sdk. The ``ScopeMiddleware`` gives every request its scope (client
IP, user agent, request id, and the actor its resolver reads from ``Authorization: Bearer
<user id>`` or ``X-API-Key``); the ``endpoint`` decorator below checks who may call a route
and opens the request's transaction; the service functions carry ``@obs.audited`` /
``@obs.tracked`` and meter uploads with ``obs.metered_storage`` against a 100 kB quota per
organization. The app's tables and the obs_ tables share one SQLite file (a temp dir by
default), so the audit rows commit with the writes they describe. Stripe webhooks go
through ``WebhookHandler``, whose ``obs.once`` makes a redelivery a no-op.

``create_app(database_url)`` builds the app, so tests can serve it.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, LargeBinary, String, create_engine, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import obs_sdk as obs
from obs_sdk.integrations.asgi import ScopeMiddleware, stripe_webhook_endpoint
from obs_sdk.integrations.stripe import WebhookHandler

QUOTA_BYTES = 100_000  # per organization
DEMO_STRIPE_SECRET = "whsec_demo_not_a_real_secret"
DEMO_ADMIN_KEY = "demo-admin-key"


# --- the app's own tables --------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "app_files"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    organization: Mapped[str] = mapped_column(String)
    owner_id: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    public: Mapped[bool] = mapped_column(default=False)


class PaymentRow(Base):
    __tablename__ = "app_payments"
    invoice_id: Mapped[str] = mapped_column(String, primary_key=True)
    organization: Mapped[str | None] = mapped_column(String, nullable=True)
    amount: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class User:
    id: str
    name: str
    email: str
    organization: str

    @property
    def actor(self) -> obs.Actor:
        return obs.Actor.user(self.id, name=self.name, email=self.email)


# A stand-in for a user store: the bearer token is the user id (a demo, not auth).
USERS = {
    u.id: u
    for u in (
        User("u_ada", "Ada", "ada@example.com", "org_acme"),
        User("u_bob", "Bob", "bob@example.com", "org_acme"),
        User("u_eve", "Eve", "eve@example.com", "org_evil"),
    )
}


class NotFound(Exception):
    pass


# --- the service: plain functions, instrumented only by decorators ---------------------------


@obs.tracked("file_uploaded", properties={"bytes": "{result.size}"})
@obs.audited(
    "file.uploaded",
    resource=obs.Resource("file", "{result.id}", name="{name}"),
    metadata={"bytes": "{result.size}"},
)
def upload(session: Session, user: User, name: str, content: bytes) -> FileRow:
    row = FileRow(
        id="f_" + uuid.uuid4().hex[:12],
        organization=user.organization,
        owner_id=user.id,
        name=name,
        size=len(content),
        content=content,
    )
    # Charged to the scope's organization, atomically with the insert; QuotaExceeded
    # means nothing was written.
    with obs.metered_storage(session, object_id=row.id, bytes=row.size):
        session.add(row)
    return row


def _own_file(session: Session, user: User, file_id: str) -> FileRow:
    row = session.get(FileRow, file_id)
    if row is None or row.organization != user.organization:
        raise NotFound(file_id)
    return row


@obs.tracked("file_downloaded", properties={"file_id": "{file_id}"})
@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}", name="{result.name}"),
    metadata={"bytes": "{result.size}"},
)
def download(session: Session, user: User, file_id: str) -> FileRow:
    return _own_file(session, user, file_id)


@obs.audited("file.shared", resource=obs.Resource("file", "{file_id}"))
def share(session: Session, user: User, file_id: str) -> None:
    _own_file(session, user, file_id).public = True


@obs.tracked("shared_file_downloaded", properties={"file_id": "{file_id}"}, allow_anonymous=True)
@obs.audited(
    "file.downloaded",
    resource=obs.Resource("file", "{file_id}", name="{result.name}"),
    # The owner goes into metadata: an anonymous download is never blamed on the owner.
    metadata={"via": "public_share", "shared_by_user_id": "{result.owner_id}"},
)
def download_shared(session: Session, file_id: str) -> FileRow:
    row = session.get(FileRow, file_id)
    if row is None or not row.public:
        raise NotFound(file_id)
    return row


@obs.audited(
    "file.deleted", resource=obs.Resource("file", "{file_id}"), emit_if=lambda call: call.result
)
def delete_file(session: Session, user: User, file_id: str) -> bool:
    _own_file(session, user, file_id)
    # The release commits with the delete, so usage cannot drift from the files.
    with obs.metered_storage(session, object_id=file_id, release=True):
        return session.execute(delete(FileRow).where(FileRow.id == file_id)).rowcount > 0


# Recorded when the export starts: sending even part of the data leaves a trail.
@obs.audited("files.exported", when="start", metadata={"organization": "{organization}"})
def export_files(session: Session, organization: str | None) -> list[dict[str, Any]]:
    query = select(FileRow).order_by(FileRow.id)
    if organization:
        query = query.where(FileRow.organization == organization)
    return [
        {"id": r.id, "organization": r.organization, "name": r.name, "size": r.size}
        for r in session.scalars(query)
    ]


@obs.audited(
    "billing.invoice_paid",
    resource=obs.Resource("invoice", "{invoice_id}"),
    metadata={"amount": "{amount}", "organization": "{organization}"},
)
def record_payment(
    session: Session, invoice_id: str, organization: str | None, amount: int
) -> None:
    session.add(PaymentRow(invoice_id=invoice_id, organization=organization, amount=amount))


def latest_audit(engine: Any, limit: int = 50) -> list[obs.AuditRecord]:
    """Return the newest *limit* audit records, newest first."""
    obs.flush(timeout=2.0)  # show what is still queued, e.g. "started" export records
    # audit_log pages oldest first; a demo database is small enough to walk.
    records: list[obs.AuditRecord] = []
    while page := obs.audit_log(engine, limit=500, after=records[-1].id if records else None):
        records.extend(page)
    return records[::-1][:limit]


# --- the web layer: no obs_sdk call in a route body ------------------------------------------


def resolve_actor(scope: dict[str, Any], admin_key: str) -> obs.Actor | None:
    """ScopeMiddleware resolver: a bearer token names a user, X-API-Key the admin service."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    token = headers.get("authorization", "").removeprefix("Bearer ").strip()
    if token in USERS:
        return USERS[token].actor
    if admin_key and headers.get("x-api-key") == admin_key:
        return obs.Actor.service("svc_admin_export", name="admin export key")
    return None  # the middleware records an anonymous actor


def endpoint(
    db: sessionmaker[Session], *, who: str | None
) -> Callable[[Callable[..., Response]], Callable[[Request], Awaitable[Response]]]:
    """Wrap a sync route: check the actor (*who*: "user", "service" or None), open a transaction.

    The route runs in Starlette's thread pool (in a copy of the request's context, so the
    middleware's scope goes with it) and receives ``(request, session)``, plus the ``User``
    when *who* is "user"; the raw body is in ``request.state.body``. The scope gets the
    session (audit rows commit with the route's writes) and the user's organization
    (storage is metered and records are filed per organization).
    """

    def decorate(route: Callable[..., Response]) -> Callable[[Request], Awaitable[Response]]:
        def in_transaction(request: Request, user: User | None) -> Response:
            with db() as session, session.begin():
                org = user.organization if user else None
                with obs.scope(session=session, organization=org):
                    return route(request, session, user) if user else route(request, session)

        @functools.wraps(route)
        async def wrapper(request: Request) -> Response:
            actor = obs.current_scope().actor
            if who is not None and (actor is None or actor.type != who):
                return JSONResponse({"error": f"this route needs a {who}"}, status_code=401)
            user = USERS[actor.id] if who == "user" and actor and actor.id else None
            request.state.body = await request.body()
            return await run_in_threadpool(in_transaction, request, user)

        return wrapper

    return decorate


def render_audit(records: list[obs.AuditRecord]) -> str:
    columns = ("occurred_at", "action", "outcome", "actor_type", "actor_id", "resource_type",
               "resource_id", "organization_id", "ip", "user_agent", "request_id",
               "metadata")  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(json.dumps(v) if isinstance(v, dict) else str(v or ''))}</td>"
            for v in (getattr(r, c) for c in columns)
        )
        + "</tr>"
        for r in records
    )
    return (
        "<!doctype html><title>audit trail</title>"
        "<style>td,th{border:1px solid #ccc;padding:2px 6px;font:13px monospace}</style>"
        f"<h1>Latest audit trail</h1><table><tr>{head}</tr>{body}</table>"
    )


INDEX = """obs_sdk demo web app. Try (the bearer token is the user id):

  curl -X POST -H 'Authorization: Bearer u_ada' --data-binary 'hello' '{u}/files?name=hi.txt'
  curl -H 'Authorization: Bearer u_ada' {u}/files/<id>
  curl -X POST -H 'Authorization: Bearer u_ada' {u}/files/<id>/share
  curl {u}/s/<id>                                   # anonymous public-share download
  curl -X DELETE -H 'Authorization: Bearer u_ada' {u}/files/<id>
  curl -H 'X-API-Key: {key}' {u}/admin/export       # service actor
  curl -H 'X-Forwarded-For: 6.6.6.6' {u}/s/<id>     # forged: the recorded ip stays the peer
  open {u}/audit                                    # the trail those calls left

Stripe webhooks: POST {u}/stripe/webhook, signed with {secret_hint}.
"""


def create_app(
    database_url: str | None = None,
    *,
    stripe_secret: str = DEMO_STRIPE_SECRET,
    admin_key: str = DEMO_ADMIN_KEY,
    trusted_proxies: tuple[str, ...] = (),
    posthog: Any = None,
) -> ScopeMiddleware:
    """Build the demo app on *database_url* (default: a SQLite file in a new temp dir).

    Configures obs_sdk on the same database (app tables and obs_ tables together).
    """
    if database_url is None:
        database_url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='obs-webapp-')) / 'app.db'}"
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    obs.configure(database=engine, service="files-web", storage_quota=QUOTA_BYTES, posthog=posthog)
    db = sessionmaker(engine)

    hooks = WebhookHandler(secret=stripe_secret, sessionmaker=db)

    @hooks.on("invoice.paid")
    def invoice_paid(event: Any, session: Session) -> None:
        invoice = event.data.object.to_dict()  # StripeObject is not a dict: no .get()
        org = (invoice.get("metadata") or {}).get("organization")
        record_payment(session, invoice["id"], org, int(invoice.get("amount_paid") or 0))

    @endpoint(db, who="user")
    def upload_route(request: Request, session: Session, user: User) -> Response:
        name = request.query_params.get("name") or "untitled"
        row = upload(session, user, name, request.state.body)
        return JSONResponse({"id": row.id, "name": row.name, "size": row.size}, 201)

    @endpoint(db, who="user")
    def download_route(request: Request, session: Session, user: User) -> Response:
        row = download(session, user, request.path_params["file_id"])
        return Response(row.content, media_type="application/octet-stream")

    @endpoint(db, who="user")
    def share_route(request: Request, session: Session, user: User) -> Response:
        share(session, user, request.path_params["file_id"])
        return JSONResponse({"url": f"/s/{request.path_params['file_id']}"})

    @endpoint(db, who="user")
    def delete_route(request: Request, session: Session, user: User) -> Response:
        deleted = delete_file(session, user, request.path_params["file_id"])
        return Response(status_code=204 if deleted else 404)

    @endpoint(db, who=None)
    def public_route(request: Request, session: Session) -> Response:
        row = download_shared(session, request.path_params["file_id"])
        return Response(row.content, media_type="application/octet-stream")

    @endpoint(db, who="service")
    def export_route(request: Request, session: Session) -> Response:
        return JSONResponse(export_files(session, request.query_params.get("organization")))

    def audit_route(request: Request) -> Response:
        return HTMLResponse(render_audit(latest_audit(engine)))

    def index_route(request: Request) -> Response:
        hint = "the demo secret" if stripe_secret == DEMO_STRIPE_SECRET else "your secret"
        url = str(request.base_url).rstrip("/")
        return PlainTextResponse(INDEX.format(u=url, key=admin_key, secret_hint=hint))

    errors = {
        NotFound: lambda request, exc: JSONResponse({"error": "not found"}, 404),
        obs.QuotaExceeded: lambda request, exc: JSONResponse(
            {"error": "quota exceeded", "used": exc.used, "limit": exc.limit}, 413
        ),
    }
    app = Starlette(
        routes=[
            Route("/", index_route),
            Route("/files", upload_route, methods=["POST"]),
            Route("/files/{file_id}", download_route, methods=["GET"]),
            Route("/files/{file_id}", delete_route, methods=["DELETE"]),
            Route("/files/{file_id}/share", share_route, methods=["POST"]),
            Route("/s/{file_id}", public_route),
            Route("/admin/export", export_route),
            Route("/stripe/webhook", stripe_webhook_endpoint(hooks), methods=["POST"]),
            Route("/audit", audit_route),
        ],
        exception_handlers=errors,
    )
    # Outermost, so that even Starlette's 500 page carries the request id.
    return ScopeMiddleware(
        app,
        actor=functools.partial(resolve_actor, admin_key=admin_key),
        trusted_proxies=trusted_proxies,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--database", default=os.environ.get("WEBAPP_DATABASE_URL"))
    parser.add_argument(
        "--trusted-proxy", action="append", default=[], help="IP or CIDR (repeatable)"
    )
    args = parser.parse_args()
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(
            "the demo web app needs uvicorn: add it to the tests dependency group "
            "(see docs/web.md) or run: .venv/bin/python -m pip install 'uvicorn>=0.30'"
        ) from None
    app = create_app(
        args.database,
        stripe_secret=os.environ.get("STRIPE_WEBHOOK_SECRET", DEMO_STRIPE_SECRET),
        trusted_proxies=tuple(args.trusted_proxy),
    )
    print(f"obs_sdk demo web app on http://{args.host}:{args.port}/  (audit trail: /audit)")
    # proxy_headers=False: ScopeMiddleware reads X-Forwarded-For through trusted_proxies;
    # uvicorn's own handling (which trusts 127.0.0.1 by default) would rewrite the peer first.
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=False, log_level="info")


if __name__ == "__main__":
    main()
