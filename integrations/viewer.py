"""An embeddable audit trail page: one organization's records, for that organization.

::

    from obs_sdk.integrations.viewer import audit_viewer

    app.mount("/audit", audit_viewer(authorize=organization_of_admin))

``audit_viewer`` returns an ASGI app (Starlette) serving server-rendered HTML: newest
first, filters (actor, action, resource, time), paging, a CSV export and each record's
seal status. No JavaScript, no CDN: one page and its inline style.
"""

from __future__ import annotations

import datetime
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import obs_sdk as obs
from obs_sdk._integration_api import configured_engine, seal_status
from obs_sdk.cli._rows import csv_lines
from obs_sdk.exceptions import ConfigurationError, MissingDependencyError

try:
    import jinja2
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:
    raise MissingDependencyError(package=exc.name or "starlette", extra="viewer") from None

__all__ = ["Authorize", "audit_viewer"]

Authorize = Callable[[Request], "str | Awaitable[str | None] | None"]
"""Takes the request; returns the one organization its sender may see, or None (403)."""

PAGE_SIZE = 50
_CSV_PAGE = 5000
_TEMPLATES = Path(__file__).with_name("viewer_templates")

# The page runs no script and loads nothing from elsewhere: a value that slipped past
# escaping still could not run (defence in depth), and the page cannot be framed by others.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # one organization's private trail: never cached
}


class _BadFilter(ValueError):
    """A filter value the page cannot use; shown to the user, answered 400."""


def _time(name: str, text: str) -> datetime.datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _BadFilter(f"{name}: {text!r} is not a date and time (2026-12-06T10:00)") from None
    if parsed.tzinfo is None:  # the form's datetime-local fields: read as UTC, as shown
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


_FORM = ("actor", "action", "resource", "since", "until")


def _form(request: Request) -> dict[str, str]:
    """The filter form's values, as typed (shown back in the form)."""
    return {name: request.query_params.get(name, "").strip() for name in _FORM}


def _filters(form: dict[str, str], organization: str) -> dict[str, Any]:
    """The audit_log filters of *form*, for *organization*.

    The organization is always the authorized one: no query parameter is read for it.
    """
    rtype, _, rid = form["resource"].partition(":")
    return {
        "organization": organization,
        "actor_id": form["actor"] or None,
        "action": form["action"] or None,
        "resource": (rtype, rid or None) if rtype else None,
        "since": _time("from", form["since"]),
        "until": _time("until", form["until"]),
    }


def _cursor(request: Request) -> str | None:
    after = request.query_params.get("after", "")
    if not after:
        return None
    try:
        return str(uuid.UUID(after))
    except ValueError:
        raise _BadFilter(f"after: {after!r} is not a record id") from None


def audit_viewer(*, authorize: Authorize, bind: Any = None) -> Starlette:
    """Return an ASGI app showing the audit trail of the organization *authorize* names.

    *authorize* takes the Starlette ``Request`` (sync or async) and returns the
    organization id its sender may see, or None: the app answers 403 and reads nothing.
    There is no default access, and no query parameter widens it: every read is filtered
    by that organization. Mount it behind your authentication (``app.mount("/audit",
    ...)``); ``request.state`` and ``request.scope`` carry what your middleware put there.

    *bind* is an Engine; None reads configure()'s database at request time. Reads run on
    Starlette's thread pool. Pages are newest first (``PAGE_SIZE`` records); ``/export.csv``
    streams every matching record, oldest first, with spreadsheet formulas neutralised.

    Raises:
        ConfigurationError: *authorize* is not callable.
        MissingDependencyError: starlette or jinja2 is missing (``obs-sdk[viewer]``).
    """
    if not callable(authorize):
        raise ConfigurationError(
            "audit_viewer(authorize=...) takes a function of the request returning the "
            "organization id its sender may see, or None to refuse (403)"
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every value is text: a <script> in metadata is shown, never run
        undefined=jinja2.StrictUndefined,
    )
    # Jinja's own tojson marks its output safe for <script> contexts; here metadata is
    # shown as text in a cell, so it is plain JSON that autoescaping then escapes.
    env.filters["tojson_text"] = lambda value: json.dumps(
        value, ensure_ascii=False, sort_keys=True, indent=1, default=str
    )

    def engine() -> Any:
        found = bind if bind is not None else configured_engine()
        if found is None:
            raise ConfigurationError(
                "audit_viewer(bind=None) reads configure()'s database: call "
                "obs.configure(database=...) at startup, or pass bind=engine"
            )
        return found

    async def organization_of(request: Request) -> str | None:
        org = authorize(request)
        if inspect.isawaitable(org):
            org = await org
        if org is not None and not isinstance(org, str):
            raise ConfigurationError(
                f"audit_viewer's authorize() returned {type(org).__name__}: return the "
                "organization id (a str) or None"
            )
        return org or None

    def page(code: int, **context: Any) -> HTMLResponse:
        values = {
            "denied": False,
            "error": None,
            "organization": None,
            "records": [],
            "form": {},
            "seals": {},
            "older": None,
            "newest": None,
            "csv": None,
            **context,
        }
        html = env.get_template("viewer.html").render(**values)
        return HTMLResponse(html, status_code=code, headers=_HEADERS)

    async def trail(request: Request) -> Response:
        org = await organization_of(request)
        if org is None:
            return page(403, denied=True)
        form = _form(request)
        try:
            filters = _filters(form, org)
            after = _cursor(request)
        except _BadFilter as exc:
            return page(400, error=str(exc), organization=org, form=form)
        bind_ = engine()

        def read() -> tuple[list[Any], dict[Any, str]]:
            found = obs.audit_log(bind_, **filters, after=after, limit=PAGE_SIZE + 1, order="desc")
            return found, seal_status(bind_, [record.id for record in found[:PAGE_SIZE]])

        records, seals = await run_in_threadpool(read)
        more = len(records) > PAGE_SIZE
        records = records[:PAGE_SIZE]
        kept = {k: v for k, v in form.items() if v}
        base = request.url.remove_query_params(["after"]).include_query_params(**kept)
        return page(
            200,
            organization=org,
            records=records,
            form=form,
            seals=seals,
            older=str(base.include_query_params(after=str(records[-1].id))) if more else None,
            newest=str(base) if after else None,
            csv=str(request.url_for("csv").include_query_params(**kept)),
        )

    async def csv(request: Request) -> Response:
        org = await organization_of(request)
        if org is None:
            return Response("forbidden\n", status_code=403, media_type="text/plain")
        try:
            filters = _filters(_form(request), org)
        except _BadFilter as exc:
            return Response(f"{exc}\n", status_code=400, media_type="text/plain")
        bind_ = engine()

        async def body() -> AsyncIterator[str]:
            after: str | None = None
            header = True
            while True:
                found = await run_in_threadpool(
                    obs.audit_log, bind_, **filters, after=after, limit=_CSV_PAGE, order="asc"
                )
                if found or header:
                    yield "".join(csv_lines(found, header=header, spreadsheet_safe=True))
                header = False
                if len(found) < _CSV_PAGE:
                    return
                after = str(found[-1].id)

        filename = f"audit-{''.join(c for c in org if c.isalnum() or c in '-_')}.csv"
        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return Starlette(
        routes=[Route("/", trail, name="trail"), Route("/export.csv", csv, name="csv")]
    )
