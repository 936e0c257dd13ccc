"""The demo web app (docs/examples/webapp.py, on FastAPI) end to end, served by uvicorn."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

import obs_sdk as obs
from tests.support.stripe_signing import TEST_SECRET, delivery
from tests.support.web import serve_asgi

WEBAPP = Path(__file__).parents[3] / "docs" / "examples" / "webapp.py"
ADMIN_KEY = "test-admin-key"
ADA = {"Authorization": "Bearer u_ada"}


def load_webapp() -> Any:
    """Import docs/examples/webapp.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("obs_demo_webapp", WEBAPP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: SQLAlchemy resolves the models' annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


webapp = load_webapp()


@contextmanager
def running(url: str, **options: Any) -> Iterator[httpx.Client]:
    """Serve create_app(url) and yield an httpx client bound to it."""
    app = webapp.create_app(url, stripe_secret=TEST_SECRET, admin_key=ADMIN_KEY, **options)
    with serve_asgi(app) as base, httpx.Client(base_url=base) as client:
        yield client


@pytest.fixture
def client(sqlite_url: str) -> Iterator[httpx.Client]:
    """A client of the demo app on a SQLite file, no trusted proxies."""
    with running(sqlite_url) as client:
        yield client


def trail(url: str) -> list[tuple[Any, ...]]:
    """Return (action, outcome, actor_type, actor_id, ip, request_id) per audit record."""
    obs.flush()
    return [
        (r.action, r.outcome, r.actor_type, r.actor_id, r.ip, r.request_id)
        for r in obs.audit_log(create_engine(url), order="asc")
    ]


def upload(client: httpx.Client, data: bytes, rid: str = "r-up") -> httpx.Response:
    """Upload *data* as Ada."""
    return client.post(
        "/files", params={"name": "a.txt"}, content=data, headers={**ADA, "X-Request-Id": rid}
    )


class _Cells(HTMLParser):
    """Collect the text of every table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")

    def handle_data(self, data: str) -> None:
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


class TestDemoWebApp:
    def test_file_sharing_flow_leaves_the_right_trail(self, client, sqlite_url):
        """Upload, download, share, anonymous download and delete: one record each, right actor."""
        file_id = upload(client, b"hello").json()["id"]
        headers = {**ADA, "X-Request-Id": "r-down"}
        assert client.get(f"/files/{file_id}", headers=headers).content == b"hello"
        assert client.get(f"/s/{file_id}").status_code == 404  # not shared yet
        client.post(f"/files/{file_id}/share", headers={**ADA, "X-Request-Id": "r-share"})
        assert client.get(f"/s/{file_id}", headers={"X-Request-Id": "r-anon"}).content == b"hello"
        delete = client.delete(f"/files/{file_id}", headers={**ADA, "X-Request-Id": "r-del"})
        assert delete.status_code == 204
        ip = "127.0.0.1"
        assert trail(sqlite_url) == [
            ("file.uploaded", "success", "user", "u_ada", ip, "r-up"),
            ("file.downloaded", "success", "user", "u_ada", ip, "r-down"),
            ("file.shared", "success", "user", "u_ada", ip, "r-share"),
            ("file.downloaded", "success", "anonymous", None, ip, "r-anon"),
            ("file.deleted", "success", "user", "u_ada", ip, "r-del"),
        ]

    def test_anonymous_download_names_the_owner_in_metadata(self, client, sqlite_url):
        """A public-share download is anonymous, with the owner in metadata only."""
        file_id = upload(client, b"x").json()["id"]
        client.post(f"/files/{file_id}/share", headers=ADA)
        client.get(f"/s/{file_id}")
        obs.flush()
        [record] = obs.audit_log(create_engine(sqlite_url), action="file.shared")
        [anon] = [
            r
            for r in obs.audit_log(create_engine(sqlite_url), action="file.downloaded")
            if r.actor_type == "anonymous"
        ]
        assert record.actor_id == "u_ada"
        assert (anon.actor_id, anon.metadata["shared_by_user_id"]) == (None, "u_ada")

    def test_forged_forwarded_for_is_ignored(self, client, sqlite_url):
        """X-Forwarded-For from an untrusted peer is ignored: the socket peer is recorded."""
        file_id = upload(client, b"x", rid="r-forged").json()["id"]
        client.get(f"/files/{file_id}", headers={**ADA, "X-Forwarded-For": "6.6.6.6"})
        assert {row[4] for row in trail(sqlite_url)} == {"127.0.0.1"}

    def test_trusted_proxy_forwarded_for_is_used(self, sqlite_url):
        """Behind a trusted proxy (the loopback peer) the forwarded client ip is recorded."""
        with running(sqlite_url, trusted_proxies=("127.0.0.1",)) as client:
            forwarded = {**ADA, "X-Forwarded-For": "203.0.113.7", "X-Request-Id": "r-fw"}
            client.post("/files", params={"name": "a"}, content=b"x", headers=forwarded)
        assert trail(sqlite_url) == [
            ("file.uploaded", "success", "user", "u_ada", "203.0.113.7", "r-fw")
        ]

    def test_export_is_recorded_for_the_service_actor(self, client, sqlite_url):
        """The admin export runs as the API key's service actor, recorded when it starts;
        a user is refused, and the refusal is recorded as access.denied."""
        upload(client, b"x")
        assert client.get("/admin/export", headers=ADA).status_code == 401
        response = client.get(
            "/admin/export", headers={"X-API-Key": ADMIN_KEY, "X-Request-Id": "r-exp"}
        )
        assert [f["name"] for f in response.json()] == ["a.txt"]
        assert trail(sqlite_url)[-2][:4] == ("access.denied", "failure", "user", "u_ada")
        assert trail(sqlite_url)[-1] == (
            "files.exported",
            "started",
            "service",
            "svc_admin_export",
            "127.0.0.1",
            "r-exp",
        )

    def test_webhook_pays_once(self, client, sqlite_url):
        """A signed invoice.paid writes one payment, redelivered or not; a forged one is 400."""
        invoice = {"id": "in_1", "object": "invoice", "amount_paid": 900}
        d = delivery("evt_1", "invoice.paid", {**invoice, "metadata": {"organization": "org_acme"}})
        answers = [
            client.post("/stripe/webhook", content=d.body, headers=dict(d.headers)).json()["status"]
            for _ in range(2)
        ]
        forged = client.post("/stripe/webhook", content=d.body + b" ", headers=dict(d.headers))
        with create_engine(sqlite_url).connect() as conn:
            payments = conn.execute(text("SELECT invoice_id, amount FROM app_payments")).all()
        assert answers == ["processed", "duplicate"]
        assert (forged.status_code, forged.json()["reason"]) == (400, "invalid_signature")
        assert payments == [("in_1", 900)]
        assert trail(sqlite_url)[-1][:4] == ("billing.invoice_paid", "success", "system", None)

    def test_quota_refuses_an_upload_and_delete_releases(self, client, sqlite_url):
        """An upload past 100 kB per organization is refused (413); a delete gives bytes back."""
        first = upload(client, b"x" * 60_000).json()["id"]
        refused = upload(client, b"y" * 50_000)
        assert (refused.status_code, refused.json()["used"]) == (413, 60_000)
        client.delete(f"/files/{first}", headers=ADA)
        assert upload(client, b"y" * 50_000).status_code == 201
        assert obs.storage_usage("org_acme") == 50_000

    def test_anonymous_upload_is_refused(self, client, sqlite_url):
        """Without a bearer token the file routes answer 401 and record nothing but the
        refusal (access.denied, anonymous)."""
        refused = client.post("/files", content=b"x", headers={"X-Request-Id": "r-anon"})
        assert refused.status_code == 401
        assert trail(sqlite_url) == [
            ("access.denied", "failure", "anonymous", None, "127.0.0.1", "r-anon")
        ]
        assert obs.storage_usage("org_acme") == 0

    def test_audit_page_shows_the_latest_rows(self, client):
        """GET /audit renders the trail newest first, with actors and ips, HTML-escaped."""
        file_id = upload(client, b"x", rid="r-1").json()["id"]
        client.post(f"/files/{file_id}/share", headers={**ADA, "X-Request-Id": "r-2"})
        client.get(f"/s/{file_id}", headers={"X-Request-Id": "r-3", "User-Agent": "<script>"})
        page = client.get("/audit")
        parser = _Cells()
        parser.feed(page.text)
        header, *rows = parser.rows
        keys = [header.index(k) for k in ("action", "actor_type", "actor_id", "ip", "request_id")]
        picked = [tuple(row[i] for i in keys) for row in rows]
        assert page.headers["content-type"].startswith("text/html")
        assert "<script>" not in page.text
        assert rows[0][header.index("user_agent")] == "<script>"  # escaped, then parsed back
        assert picked == [
            ("file.downloaded", "anonymous", "", "127.0.0.1", "r-3"),
            ("file.shared", "user", "u_ada", "127.0.0.1", "r-2"),
            ("file.uploaded", "user", "u_ada", "127.0.0.1", "r-1"),
        ]
