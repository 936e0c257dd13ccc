"""The core's one interface for obs_sdk's own integrations: what they need beyond SPEC's names.

``integrations/`` (the ASGI and WSGI middlewares, Celery, the audit viewer...) is built on
the names ``obs_sdk`` exports. What else an integration needs of the core it takes from
here and from nowhere else private (``tests/unit/test_boundaries.py`` enforces it), so the
core's parts can move without breaking an integration: each name below says what it is for
and stays working as the parts behind it change.

Not for apps: nothing here is in SPEC, and any release may change it. The leading
underscore is deliberate: a submodule without one becomes an attribute of the ``obs_sdk``
package once imported, which ``tests/unit/test_public_api.py`` would count as public API.
"""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping, Sequence
from typing import Any

from sqlalchemy import select

from obs_sdk import _config
from obs_sdk._guard import count_error, guard
from obs_sdk._ledger._tables import tables
from obs_sdk._scope._values import EMPTY_SCOPE, Scope
from obs_sdk._seals._leaf import leaf_of, record_fields
from obs_sdk.propagation import _CARRIED_KEY, _keys, _ScopePropagator

__all__ = [
    "configured_engine",
    "count_error",
    "extract_signed_scope",
    "guard",
    "inject_signed_scope",
    "seal_status",
    "signing_keys",
]

# -- The never-raise guard (STYLE.md section 6) ----------------------------------------------
# Middlewares and signal handlers run on the caller's path: they count their own failures
# exactly as the core does (obs.stats()["internal_errors"], one rate-limited log line) with
# count_error(site, exc) and `with guard(site):`, imported from here.

# -- The scope across a message queue (obs_sdk.propagation's signed wire format) ---------------


def signing_keys(secret: object, function: str) -> tuple[bytes, ...]:
    """Check *secret* (one, or a list while rotating) as ``propagation.extract`` does.

    Raises:
        ConfigurationError: a secret is not a non-empty str or bytes; the message names
            ``function(secret=...)``.
    """
    return _keys(secret, function, rotation=True)


def inject_signed_scope(
    headers: MutableMapping[str, Any], keys: Sequence[bytes], *, issued_at: float
) -> None:
    """Write the current scope's ids into *headers*, signed with ``keys[0]`` as of *issued_at*.

    As ``obs.propagation.inject``, except that the signature's time is given: a queued
    task's is the time it is due to run, so a countdown does not eat its ``max_age``.
    """
    _ScopePropagator(keys, issued_at=issued_at).inject(headers)


def extract_signed_scope(
    carrier: Any, keys: Sequence[bytes], *, max_age: float
) -> tuple[Scope, str | None]:
    """Return the scope *carrier* carries (its actor trusted) and why it was refused, if it was.

    As ``obs.propagation.extract(carrier, secret=..., trust_actor=True, max_age=...)``,
    without opening the scope: the caller enters it when the work starts and leaves it when
    the work ends (Celery's prerun and postrun signals). A refused carrier gives the empty
    scope and the reason (forged, tampered, unsigned, expired), for an audit trace.
    """
    propagator = _ScopePropagator(keys, trust_actor=True, max_age=max_age)
    carried = propagator.extract(carrier).get(_CARRIED_KEY)
    return (carried if isinstance(carried, Scope) else EMPTY_SCOPE), propagator.rejected


# -- The ledger, for the audit viewer --------------------------------------------------------


def configured_engine() -> Any:
    """Return the Engine ``obs.configure(database=...)`` set, or None before configure()."""
    return _config.current().engine


def seal_status(engine: Any, record_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each record's seal status by id: sealed, unsealed or tampered; {} when nothing is sealed.

    "sealed": the record, as stored now, hashes to the leaf its seal holds; "tampered": it
    does not; "unsealed": no seal holds it yet. The seals' signatures and chain are
    ``obs.verify``'s to check (it needs the public key); this is the per-record half,
    computed the way verify computes it. {} when nothing was ever sealed (a column would say
    "unsealed" on every row). Reads the tables of the configured prefix; blocks on *engine*.
    """
    if not record_ids:
        return {}
    t = tables(_config.current().table_prefix)
    leaves, audit = t.seal_leaves, t.audit
    query = (
        select(leaves.c.leaf_hash, leaves.c.commitments, leaves.c.salt, *audit.columns)
        .select_from(audit.outerjoin(leaves, leaves.c.record_id == audit.c.id))
        .where(audit.c.id.in_(record_ids))
    )
    columns = [c.name for c in audit.columns]
    with engine.connect() as conn:
        if conn.execute(select(t.seals.c.seq).limit(1)).first() is None:
            return {}
        rows = conn.execute(query).all()
    status = {}
    for row in rows:
        record = row[3:]
        if row[0] is None:
            status[record[0]] = "unsealed"
            continue
        leaf = leaf_of(record_fields(record, columns), row[2], row[1])
        status[record[0]] = "sealed" if not leaf.problem and leaf.hash == row[0] else "tampered"
    return status
