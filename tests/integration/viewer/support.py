"""The viewer tests' app: a trail of two organizations, and an app that mounts the viewer."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

import obs_sdk as obs
from obs_sdk.integrations.viewer import audit_viewer

# Bearer token -> the organization its holder administers (a stand-in for the app's auth).
TOKENS = {"acme-admin": "org_acme", "other-admin": "org_other", "nobody": None}
ACME = {"authorization": "Bearer acme-admin"}
SCRIPT = "<script>document.title='pwned'; alert('x')</script>"


def authorize(request: Request) -> str | None:
    """The app's rule: the organization of the token's holder; none without a token."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    return TOKENS.get(token)


def seed(url: str, n: int) -> sa.Engine:
    """Write *n* records alternating org_acme / org_other; return an engine on *url*.

    Record i: actor u_<i % 3>, action file.deleted when i % 4 == 0 else file.downloaded,
    resource file:f_<i>, metadata {"i": i, "note": SCRIPT}; org_other's carry "secret-<i>".
    """
    obs.configure(database=url, handle_signals=False)
    for i in range(n):
        org = "org_acme" if i % 2 == 0 else "org_other"
        actor = obs.Actor.user(f"u_{i % 3}", name=f"User {i % 3}", email=f"u{i % 3}@example.com")
        with obs.scope(actor=actor, organization=org, ip="203.0.113.5"):
            metadata: dict[str, Any] = {"i": i, "note": SCRIPT}
            if org == "org_other":
                metadata["other"] = f"secret-{i}"
            obs.record_audit(
                "file.deleted" if i % 4 == 0 else "file.downloaded",
                resource=obs.Resource("file", f"f_{i}"),
                metadata=metadata,
            )
    assert obs.flush(timeout=30)
    obs.shutdown()
    return sa.create_engine(url)


def app_with_viewer(engine: sa.Engine | None) -> Starlette:
    """The user's app, with the viewer mounted at /admin/audit."""
    return Starlette(routes=[Mount("/admin/audit", audit_viewer(authorize=authorize, bind=engine))])
