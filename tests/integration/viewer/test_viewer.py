"""The embeddable viewer over ASGI (httpx): authorization, filters, paging, CSV, escaping."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.requests import Request

import obs_sdk as obs
from obs_sdk.integrations.viewer import PAGE_SIZE, audit_viewer
from tests.integration.viewer.support import ACME, SCRIPT, app_with_viewer, seed

ROOT = "http://app.test/admin/audit/"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with the viewer, over a trail of 12 records (6 per organization)."""
    engine = seed(database_url, 12)
    transport = httpx.ASGITransport(app=app_with_viewer(engine))
    async with httpx.AsyncClient(transport=transport) as c:
        yield c
    engine.dispose()


def shown(html: str) -> list[int]:
    """The "i" of each record row on the page, top to bottom."""
    return [int(i) for i in re.findall(r"&#34;i&#34;: (\d+)", html)]


class TestAuthorization:
    async def test_no_organization_is_403_and_shows_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        """authorize() returning None (or no credentials at all): 403, no record."""
        for headers in ({}, {"authorization": "Bearer nobody"}):
            response = await client.get(ROOT, headers=headers)
            assert response.status_code == 403
            assert shown(response.text) == []
            assert "not allowed" in response.text
            response = await client.get(ROOT + "export.csv", headers=headers)
            assert response.status_code == 403

    async def test_refused_before_any_read(self) -> None:
        """A refused request reads nothing: here the database does not even exist."""
        broken = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
        app = audit_viewer(authorize=lambda request: None, bind=broken)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
            assert (await c.get("http://t/")).status_code == 403

    async def test_only_the_authorized_organization_newest_first(
        self, client: httpx.AsyncClient
    ) -> None:
        """The page lists the organization's records, newest first, and no other's."""
        response = await client.get(ROOT, headers=ACME)
        assert response.status_code == 200
        assert shown(response.text) == [10, 8, 6, 4, 2, 0]
        assert "secret-" not in response.text

    @pytest.mark.parametrize(
        "query",
        [
            "organization=org_other",
            "organization_id=org_other",
            "org=org_other",
            "organization=org_other&organization=org_acme",
            "actor=u_1&organization=org_other",
            "resource=file:f_1",
            "workspace=x&tenant=org_other",
        ],
    )
    async def test_no_query_parameter_widens_it(
        self, client: httpx.AsyncClient, query: str
    ) -> None:
        """Whatever the query string says, another organization's records never appear."""
        for path in ("", "export.csv"):
            response = await client.get(f"{ROOT}{path}?{query}", headers=ACME)
            assert response.status_code == 200
            assert "secret-" not in response.text
            assert "org_other" not in response.text

    async def test_async_authorize(self, database_url: str) -> None:
        """authorize may be a coroutine function."""
        engine = seed(database_url, 4)

        async def authorize(request: Request) -> str | None:
            return "org_other"

        app = audit_viewer(authorize=authorize, bind=engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
            assert shown((await c.get("http://t/")).text) == [3, 1]
        engine.dispose()

    def test_authorize_is_required_and_callable(self) -> None:
        """There is no default access: authorize must be a function."""
        with pytest.raises(TypeError):
            audit_viewer(bind=None)  # type: ignore[call-arg]
        with pytest.raises(obs.ConfigurationError, match="takes a function of the request"):
            audit_viewer(authorize="org_acme")  # type: ignore[arg-type]


class TestPage:
    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("actor=u_1", [10, 4]),
            ("action=file.deleted", [8, 4, 0]),
            ("resource=file:f_6", [6]),
            ("resource=file", [10, 8, 6, 4, 2, 0]),
            ("since=2000-01-01T00:00&until=2000-01-02T00:00", []),
            ("since=2000-01-01T00:00", [10, 8, 6, 4, 2, 0]),
        ],
    )
    async def test_filters(
        self, client: httpx.AsyncClient, query: str, expected: list[int]
    ) -> None:
        """Actor, action, resource and time filters narrow the organization's trail."""
        response = await client.get(f"{ROOT}?{query}", headers=ACME)
        assert shown(response.text) == expected

    async def test_bad_filter_is_400_with_the_reason(self, client: httpx.AsyncClient) -> None:
        """A time that is not one: 400 and what is wrong, no records."""
        response = await client.get(f"{ROOT}?since=yesterday", headers=ACME)
        assert response.status_code == 400
        assert "is not a date and time" in response.text

    async def test_metadata_script_is_text(self, client: httpx.AsyncClient) -> None:
        """A <script> in metadata is escaped; the page allows no script at all (CSP)."""
        response = await client.get(ROOT, headers=ACME)
        assert "<script>" not in response.text
        assert "&lt;script&gt;document.title" in response.text
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src" not in csp  # no script source allowed
        assert response.headers["cache-control"] == "no-store"

    async def test_paging_visits_each_record_once(self, database_url: str) -> None:
        """Older → pages through the organization's trail, each record once, newest first."""
        n = 4 * (PAGE_SIZE + 7)
        engine = seed(database_url, n)
        transport = httpx.ASGITransport(app=app_with_viewer(engine))
        seen: list[int] = []
        async with httpx.AsyncClient(transport=transport) as c:
            url = f"{ROOT}?action=file.downloaded"
            while url:
                html = (await c.get(url, headers=ACME)).text
                seen += shown(html)
                older = re.search(r'id="older" href="([^"]+)"', html)
                url = older.group(1).replace("&amp;", "&") if older else ""
        engine.dispose()
        expected = [i for i in range(n - 1, -1, -1) if i % 2 == 0 and i % 4 != 0]
        assert seen == expected
        assert len(expected) > PAGE_SIZE  # more than one page was read

    async def test_configured_database_by_default(self, sqlite_url: str) -> None:
        """bind=None reads configure()'s database."""
        seed(sqlite_url, 4).dispose()
        obs.configure(database=sqlite_url, handle_signals=False)
        app = audit_viewer(authorize=lambda request: "org_acme")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
            assert shown((await c.get("http://t/")).text) == [2, 0]


class TestCsv:
    async def test_csv_of_the_organization_with_filters(self, client: httpx.AsyncClient) -> None:
        """export.csv streams the filtered trail of the organization, oldest first."""
        response = await client.get(f"{ROOT}export.csv?action=file.downloaded", headers=ACME)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert 'filename="audit-org_acme.csv"' in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [json.loads(r["metadata"])["i"] for r in rows] == [2, 6, 10]
        assert {r["organization_id"] for r in rows} == {"org_acme"}
        assert json.loads(rows[0]["metadata"])["note"] == SCRIPT

    async def test_formulas_are_neutralised(self, sqlite_url: str) -> None:
        """A value a spreadsheet would run as a formula is prefixed with a quote."""
        obs.configure(database=sqlite_url, handle_signals=False)
        with obs.scope(actor=obs.Actor.user('=HYPERLINK("http://evil")'), organization="o"):
            obs.record_audit("x.y", resource=obs.Resource("file", "+1"))
        obs.flush()
        app = audit_viewer(authorize=lambda request: "o")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
            (row,) = csv.DictReader(io.StringIO((await c.get("http://t/export.csv")).text))
        assert row["actor_id"] == '\'=HYPERLINK("http://evil")'
        assert row["resource_id"] == "'+1"

    async def test_link_on_the_page_keeps_the_filters(self, client: httpx.AsyncClient) -> None:
        """The page's Export CSV link carries its filters (not the organization)."""
        html = (await client.get(f"{ROOT}?actor=u_1", headers=ACME)).text
        link = re.search(r'id="csv" href="([^"]+)"', html)
        assert link is not None
        assert link.group(1) == "http://app.test/admin/audit/export.csv?actor=u_1"


class TestSealStatus:
    async def test_each_row_says_sealed_unsealed_or_tampered(
        self, database_url: str, tmp_path: Any
    ) -> None:
        """After a seal, a later record is unsealed and an edited one tampered."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        engine = seed(database_url, 6)
        obs.configure(database=engine, handle_signals=False, create_tables=False)
        obs.seal(engine, key=Ed25519PrivateKey.generate())
        with obs.scope(actor=obs.Actor.user("u_9"), organization="org_acme"):
            obs.record_audit("file.downloaded", metadata={"i": 99})
        assert obs.flush()
        audit = obs.metadata().tables["obs_audit_log"]
        with engine.begin() as conn:
            conn.execute(
                audit.update()
                .where(audit.c.resource_id == "f_2")
                .values(metadata={"i": 2, "note": "edited"})
            )
        transport = httpx.ASGITransport(app=app_with_viewer(engine))
        async with httpx.AsyncClient(transport=transport) as c:
            html = (await c.get(ROOT, headers=ACME)).text
        engine.dispose()
        status = re.findall(r'<td class="seal-(\w+)">', html)
        assert status == ["unsealed", "sealed", "tampered", "sealed"]  # i = 99, 4, 2, 0

    async def test_no_column_before_anything_is_sealed(self, client: httpx.AsyncClient) -> None:
        """A trail that was never sealed has no seal column."""
        html = (await client.get(ROOT, headers=ACME)).text
        assert "<th>Seal</th>" not in html
