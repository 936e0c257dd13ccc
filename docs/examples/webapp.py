"""obs_sdk demo web app: file sharing on FastAPI, instrumented only by decorators.

Run it with ``scripts/webapp`` (or ``python docs/examples/webapp.py [--port 8000]``), then
open http://127.0.0.1:8000/ for curl commands to try and http://127.0.0.1:8000/audit for
the audit trail they leave.

No route body calls obs_sdk, and there is no glue of our own between the two: one
``instrument(app, ...)`` gives every request its scope (client IP, user agent, request id,
the actor its resolver reads from ``Authorization: Bearer <user id>`` or ``X-API-Key``,
and the user's organization) and records 401/403 answers as ``access.denied``; one
``session_dependency(...)`` gives each route its session, committed when the route
returns and rolled back when it raises. The service functions carry ``@obs.audited`` /
``@obs.tracked`` and meter uploads with ``obs.metered_storage`` against a 100 kB quota per
organization. The app's tables and the obs_ tables share one SQLite file (a temp dir by
default), so the audit rows commit with the writes they describe. Stripe webhooks go
through ``WebhookHandler``, whose ``obs.once`` makes a redelivery a no-op.

``create_app(database_url)`` builds the app, so tests can serve it.
"""

# No `from __future__ import annotations`: FastAPI reads a route's annotations when the
# route is declared, and the Annotated aliases below are local to create_app().

import argparse
import functools
import html
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import Integer, LargeBinary, String, create_engine, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.asgi import stripe_webhook_endpoint
from obs_sdk.integrations.fastapi import instrument, session_dependency
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
    return obs.audit_log(engine, limit=limit)


# --- the web layer: no obs_sdk call in a route body ------------------------------------------


def resolve_actor(request: Request, admin_key: str) -> obs.Actor | None:
    """instrument() resolver: a bearer token names a user, X-API-Key the admin service.

    The user is kept on ``request.state`` for the organization resolver and the routes.
    """
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    request.state.user = USERS.get(token)
    if request.state.user is not None:
        return request.state.user.actor
    if admin_key and request.headers.get("x-api-key") == admin_key:
        return obs.Actor.service("svc_admin_export", name="admin export key")
    return None  # recorded as anonymous


def resolve_organization(request: Request) -> str | None:
    """instrument() resolver: the user's organization (storage is metered per organization)."""
    user = getattr(request.state, "user", None)
    return user.organization if user is not None else None


async def signed_in_user(request: Request) -> User:
    """Dependency: the user the resolver found, or 401 (recorded as access.denied)."""
    user = getattr(request.state, "user", None)
    if user is None:
        raise HTTPException(401, "this route needs a user: Authorization: Bearer u_ada")
    return user  # type: ignore[no-any-return]


async def admin_service(request: Request) -> None:
    """Dependency: only the admin API key's service actor passes, others get 401."""
    actor = obs.current_scope().actor
    if actor is None or actor.type != "service":
        raise HTTPException(401, "this route needs the admin API key: X-API-Key")


async def raw_body(request: Request) -> bytes:
    """Dependency: the request body, read on the event loop for a ``def`` route."""
    return await request.body()


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
  open {u}/docs                                     # the API, as FastAPI documents it

Stripe webhooks: POST {u}/stripe/webhook, signed with {secret_hint}.
"""


def create_app(
    database_url: str | None = None,
    *,
    stripe_secret: str = DEMO_STRIPE_SECRET,
    admin_key: str = DEMO_ADMIN_KEY,
    trusted_proxies: tuple[str, ...] = (),
    posthog: Any = None,
) -> FastAPI:
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

    app = FastAPI(title="obs_sdk demo: file sharing")
    instrument(
        app,
        actor=functools.partial(resolve_actor, admin_key=admin_key),
        organization=resolve_organization,
        trusted_proxies=trusted_proxies,
    )
    # The request's transaction: committed when the route returns (before the response is
    # sent: scope="function"), rolled back when it raises; the route's records join it.
    DB = Annotated[Session, Depends(session_dependency(db), scope="function")]
    SignedIn = Annotated[User, Depends(signed_in_user)]
    Body = Annotated[bytes, Depends(raw_body)]

    @app.post("/files", status_code=201)
    def upload_route(session: DB, user: SignedIn, content: Body, name: str = "untitled") -> dict:
        row = upload(session, user, name, content)
        return {"id": row.id, "name": row.name, "size": row.size}

    @app.get("/files/{file_id}")
    def download_route(file_id: str, session: DB, user: SignedIn) -> Response:
        row = download(session, user, file_id)
        return Response(row.content, media_type="application/octet-stream")

    @app.post("/files/{file_id}/share")
    def share_route(file_id: str, session: DB, user: SignedIn) -> dict:
        share(session, user, file_id)
        return {"url": f"/s/{file_id}"}

    @app.delete("/files/{file_id}")
    def delete_route(file_id: str, session: DB, user: SignedIn) -> Response:
        deleted = delete_file(session, user, file_id)
        return Response(status_code=204 if deleted else 404)

    @app.get("/s/{file_id}")
    def public_route(file_id: str, session: DB) -> Response:
        row = download_shared(session, file_id)
        return Response(row.content, media_type="application/octet-stream")

    @app.get("/admin/export", dependencies=[Depends(admin_service)])
    def export_route(session: DB, organization: str | None = None) -> list[dict[str, Any]]:
        return export_files(session, organization)

    app.add_api_route(
        "/stripe/webhook",
        stripe_webhook_endpoint(hooks),
        methods=["POST"],
        include_in_schema=False,
    )

    @app.get("/audit", response_class=HTMLResponse)
    def audit_route() -> str:
        return render_audit(latest_audit(engine))

    @app.get("/", response_class=PlainTextResponse)
    def index_route(request: Request) -> str:
        hint = "the demo secret" if stripe_secret == DEMO_STRIPE_SECRET else "your secret"
        url = str(request.base_url).rstrip("/")
        return INDEX.format(u=url, key=admin_key, secret_hint=hint)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": "not found"}, 404)

    @app.exception_handler(obs.QuotaExceeded)
    async def over_quota(request: Request, exc: obs.QuotaExceeded) -> JSONResponse:
        return JSONResponse({"error": "quota exceeded", "used": exc.used, "limit": exc.limit}, 413)

    return app


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
    # proxy_headers=False: instrument()'s middleware reads X-Forwarded-For through
    # trusted_proxies; uvicorn's own handling (which trusts 127.0.0.1 by default) would
    # rewrite the peer first.
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=False, log_level="info")


if __name__ == "__main__":
    main()
