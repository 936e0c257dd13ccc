"""obs_sdk: audit trail, product analytics and storage metering for existing functions.

Who did it, and on which workspace and organization, is read from a scope carried in
OpenTelemetry context; see ``obs.scope``. The public API is listed in ``__all__``.
"""

import importlib.metadata as _metadata

from obs_sdk import propagation
from obs_sdk._config import configure, flush, posthog_on_error, shutdown, stats
from obs_sdk._hotpath._analytics import identify_group, track, tracked
from obs_sdk._hotpath._audit import arecord_audit_now, audited, record_audit, record_audit_now
from obs_sdk._hotpath._instrument import instrument, uninstrument
from obs_sdk._hotpath._plain import Call
from obs_sdk._hotpath._records import AnalyticsEvent, AuditRecord
from obs_sdk._ledger._idempotency import idempotent, once, purge_idempotency_keys
from obs_sdk._ledger._metered_storage import metered_storage
from obs_sdk._ledger._query import aaudit_log, audit_log
from obs_sdk._ledger._storage_usage import StorageDrift, reconcile_storage, storage_usage
from obs_sdk._ledger._tables import create_tables, metadata
from obs_sdk._ledger._tx import after_commit
from obs_sdk._scope._context import current_scope, scope, set_actor, suppressed, with_scope
from obs_sdk._scope._values import Actor, Resource, Scope
from obs_sdk._seals._erasure import erase_actor
from obs_sdk._seals._proof import ProofResult, prove, verify_proof
from obs_sdk._seals._report import VerifyReport
from obs_sdk._seals._retention import purge_audit
from obs_sdk._seals._seal import seal
from obs_sdk._seals._verify import verify
from obs_sdk._stats import Stats
from obs_sdk.exceptions import (
    AuditWriteError,
    ConfigurationError,
    MissingDependencyError,
    ObsError,
    QuotaExceeded,
)

__all__ = [
    "Actor",
    "AnalyticsEvent",
    "AuditRecord",
    "AuditWriteError",
    "Call",
    "ConfigurationError",
    "MissingDependencyError",
    "ObsError",
    "ProofResult",
    "QuotaExceeded",
    "Resource",
    "Scope",
    "Stats",
    "StorageDrift",
    "VerifyReport",
    "aaudit_log",
    "after_commit",
    "arecord_audit_now",
    "audit_log",
    "audited",
    "configure",
    "create_tables",
    "current_scope",
    "erase_actor",
    "flush",
    "idempotent",
    "identify_group",
    "instrument",
    "metadata",
    "metered_storage",
    "once",
    "posthog_on_error",
    "propagation",
    "prove",
    "purge_audit",
    "purge_idempotency_keys",
    "reconcile_storage",
    "record_audit",
    "record_audit_now",
    "scope",
    "seal",
    "set_actor",
    "shutdown",
    "stats",
    "storage_usage",
    "suppressed",
    "track",
    "tracked",
    "uninstrument",
    "verify",
    "verify_proof",
    "with_scope",
]

try:
    __version__ = _metadata.version("obs-sdk")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
