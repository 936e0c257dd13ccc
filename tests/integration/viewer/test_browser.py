"""The viewer in a real headless Chromium (Debian's chromium, driven by Playwright).

The app runs under uvicorn on a loopback port; the browser sends the admin's token as
the app's authentication would. scripts/test installs chromium when it is missing.
Set OBS_UPDATE_SCREENSHOTS=1 to refresh docs/img/viewer.png from this run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import obs_sdk as obs
from tests.integration.viewer.support import SCRIPT, app_with_viewer, seed
from tests.support.web import serve_asgi

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "img" / "viewer.png"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium from the Debian package (Playwright never downloads a browser)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def viewer_url(sqlite_url: str) -> Iterator[str]:
    """The app with the viewer, served on loopback, over 12 records (6 per organization)."""
    engine = seed(sqlite_url, 12)
    with serve_asgi(app_with_viewer(engine)) as base:
        yield base + "/admin/audit/"
    engine.dispose()


def open_as(browser: Any, token: str) -> Any:
    context = browser.new_context(
        extra_http_headers={"authorization": f"Bearer {token}"},
        java_script_enabled=False,  # the page must work without JavaScript
        viewport={"width": 1280, "height": 720},
    )
    return context.new_page()


def column(page: Any, n: int) -> list[str]:
    """The text of column *n* of each record row."""
    return [c.inner_text() for c in page.query_selector_all(f"#records tbody td:nth-child({n})")]


class TestInChromium:
    def test_rows_filters_and_paging_links(self, browser: Any, viewer_url: str) -> None:
        """Rows appear newest first; a filter typed into the form and submitted narrows them."""
        page = open_as(browser, "acme-admin")
        page.goto(viewer_url)
        assert page.inner_text("#organization") == "org_acme"
        assert len(page.query_selector_all("#records tbody tr")) == 6
        assert column(page, 5) == [
            "file:f_10",
            "file:f_8",
            "file:f_6",
            "file:f_4",
            "file:f_2",
            "file:f_0",
        ]
        page.fill("input[name=action]", "file.deleted")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        assert column(page, 5) == ["file:f_8", "file:f_4", "file:f_0"]
        assert page.input_value("input[name=action]") == "file.deleted"
        page.fill("input[name=actor]", "u_1")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        assert column(page, 5) == ["file:f_4"]
        # The CSV link downloads the filtered trail.
        with page.expect_download() as download:
            page.click("#csv")
        text = Path(download.value.path()).read_text()
        assert len(text.splitlines()) == 2
        assert "f_4" in text

    @pytest.mark.parametrize(
        "query",
        [
            "?organization=org_other",
            "?organization_id=org_other&org=org_other",
            "?resource=file:f_1",
            "?actor=u_1&organization=org_other",
        ],
    )
    def test_other_organization_never_appears(
        self, browser: Any, viewer_url: str, query: str
    ) -> None:
        """Whatever the query string, org_other's records are not on org_acme's page."""
        page = open_as(browser, "acme-admin")
        page.goto(viewer_url + query)
        body = page.inner_text("body")
        assert "secret-" not in body
        assert "org_other" not in page.content()

    def test_refused_without_authorization(self, browser: Any, viewer_url: str) -> None:
        """No organization for the requester: 403 and no row."""
        page = open_as(browser, "nobody")
        response = page.goto(viewer_url)
        assert response.status == 403
        assert page.query_selector("#records") is None

    def test_script_in_metadata_is_text(
        self, browser: Any, viewer_url: str, sqlite_url: str, tmp_path: Path
    ) -> None:
        """With JavaScript on, a <script> in metadata shows as text and never runs.

        The trail is sealed first and one record added after, so the screenshot shows the
        seal column too.
        """
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        obs.seal(sqlite_url, key=Ed25519PrivateKey.generate())
        obs.configure(database=sqlite_url, handle_signals=False)
        with obs.scope(actor=obs.Actor.user("u_7", name="Grace"), organization="org_acme"):
            obs.record_audit(
                "report.exported", resource=obs.Resource("report", "r_1"), metadata={"rows": 1200}
            )
        obs.shutdown()
        context = browser.new_context(
            extra_http_headers={"authorization": "Bearer acme-admin"},
            viewport={"width": 1280, "height": 720},
        )
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(viewer_url)
        assert SCRIPT in page.inner_text("#records")
        assert page.title() == "Audit trail · org_acme"  # the script did not set it
        assert dialogs == []
        assert page.evaluate("document.querySelectorAll('#records script').length") == 0
        assert column(page, 8) == ["unsealed"] + ["sealed"] * 6
        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 0
        if os.environ.get("OBS_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(shot, SCREENSHOT)
