"""The public surface: __all__ is exactly SPEC's names, and importing obs_sdk stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import obs_sdk

SPEC_NAMES = {
    "Actor", "AnalyticsEvent", "AuditRecord", "AuditWriteError", "Call", "ConfigurationError",
    "MissingDependencyError", "ObsError", "QuotaExceeded", "Resource", "Scope", "Stats",
    "StorageDrift", "aaudit_log",
    "after_commit", "arecord_audit_now", "audit_log", "audited", "configure", "create_tables",
    "current_scope", "flush", "idempotent", "identify_group", "instrument", "metadata",
    "metered_storage", "uninstrument",
    "once", "posthog_on_error", "propagation", "purge_idempotency_keys", "reconcile_storage",
    "record_audit", "record_audit_now", "scope", "set_actor", "shutdown", "stats",
    "storage_usage", "suppressed", "track", "tracked", "with_scope",
    # The ledger's integrity (seals, proofs, erasure, retention) and the types they return.
    "ProofResult", "VerifyReport", "erase_actor", "prove", "purge_audit", "seal", "verify",
    "verify_proof",
}  # fmt: skip


class TestPublicAPI:
    def test_all_is_exactly_the_public_names(self) -> None:
        """__all__ lists every public name of the package and nothing else (an API change)."""
        public = {
            name
            for name, value in vars(obs_sdk).items()
            if not name.startswith("_")
            and getattr(value, "__module__", "obs_sdk").startswith("obs_sdk")
            and name not in {"exceptions", "testing", "integrations", "cli"}
        }
        assert set(obs_sdk.__all__) == public

    def test_all_is_spec_and_sorted(self) -> None:
        """__all__ holds SPEC's names, sorted."""
        assert set(obs_sdk.__all__) == SPEC_NAMES
        assert obs_sdk.__all__ == sorted(obs_sdk.__all__, key=lambda n: (n[0].islower(), n))

    def test_version_comes_from_the_package_metadata(self) -> None:
        """obs.__version__ is the installed distribution's version."""
        import importlib.metadata

        assert obs_sdk.__version__ == importlib.metadata.version("obs-sdk")

    def test_version_without_package_metadata(self) -> None:
        """Without package metadata (a source tree on sys.path), __version__ still reads."""
        code = (
            "import importlib.metadata as m\n"
            "def missing(name): raise m.PackageNotFoundError(name)\n"
            "m.version = missing\n"
            "import obs_sdk; print(obs_sdk.__version__)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "0+unknown"

    def test_stats_keys_are_the_stats_type(self) -> None:
        """obs.Stats (the TypedDict stats() is typed with) names exactly the keys it returns."""
        import typing

        obs_sdk.configure("sqlite://")
        stats = obs_sdk.stats()
        hints = typing.get_type_hints(obs_sdk.Stats)
        assert set(stats) == set(hints) == set(obs_sdk.Stats.__required_keys__)
        sink_type = typing.get_args(hints["by_sink"])[1]
        assert set(stats["by_sink"]["database"]) == set(typing.get_type_hints(sink_type))

    def test_when_is_a_literal(self) -> None:
        """when= is typed with the four values, which are exactly the ones accepted."""
        import typing

        hints = typing.get_type_hints(obs_sdk.audited)
        assert typing.get_args(hints["when"]) == ("success", "failure", "always", "start")
        assert typing.get_type_hints(obs_sdk.tracked)["when"] == hints["when"]

    def test_exception_tree(self) -> None:
        """Every obs exception is an ObsError; configuration and import errors keep their bases."""
        assert issubclass(obs_sdk.ConfigurationError, ValueError)
        assert issubclass(obs_sdk.MissingDependencyError, ImportError)
        for name in (
            "QuotaExceeded",
            "AuditWriteError",
            "ConfigurationError",
            "MissingDependencyError",
        ):
            assert issubclass(getattr(obs_sdk, name), obs_sdk.ObsError)


class TestImportCost:
    def test_import_loads_no_vendor_or_framework_library(self) -> None:
        """`import obs_sdk` imports no vendor, framework, rich, celery, cryptography or OTel SDK.

        Nor wrapt: obs.instrument imports it when a target is registered.
        """
        code = (
            "import sys, json, obs_sdk, obs_sdk.testing; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'posthog','stripe','starlette','fastapi','flask','werkzeug','contextvars_extras',"
            "'rich','celery','kombu','cryptography','jinja2','click','wrapt'} "
            "or m.startswith('opentelemetry.sdk'))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == []

    def test_no_file_is_created_by_importing(self, tmp_path: object) -> None:
        """Importing and recording before configure() writes nothing anywhere."""
        code = (
            "import obs_sdk as obs\n"
            "@obs.audited('x')\n"
            "def f(): pass\n"
            "f()\n"
            "import os; print(sorted(os.listdir('.')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
        )
        assert out.stdout.strip() == "[]"
        assert "never delivered because obs.configure() was never called" in out.stderr


class TestMissingDependency:
    def test_message_names_the_extra(self) -> None:
        """MissingDependencyError tells the user which extra to install."""
        error = obs_sdk.MissingDependencyError(package="stripe", extra="stripe")
        assert str(error) == (
            "'stripe' is not installed, and obs_sdk needs it here; "
            "install it with: pip install 'obs-sdk[stripe]'"
        )
        assert error.name == "stripe"
