"""metered_storage(): charges, releases, quotas, savepoints, owners, audit, reconcile.

The core behaviour runs on a SQLite file (pysqlite's default driver mode) and on the real
PostgreSQL through the ``database_url`` fixture. Concurrency is in
tests/acceptance/test_storage_concurrency.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import obs_sdk as obs
from obs_sdk.testing import capture

ORG = "org_1"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """The app's engine (default driver settings) on a database obs_sdk is configured with."""
    obs.configure(database=database_url)
    app = sa.create_engine(database_url)
    yield app
    app.dispose()


def fail() -> None:
    raise RuntimeError("upload failed")


def usage(engine: sa.Engine, owner: str = ORG) -> int:
    with engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT bytes FROM obs_storage_usage WHERE owner = :o"), {"o": owner}
        ).scalar()
    return int(value or 0)


def ledger(engine: sa.Engine) -> dict[str, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT object_id, owner, bytes FROM obs_storage_objects"))
        return {r[0]: (r[1], int(r[2])) for r in rows}


def charge(engine: sa.Engine, object_id: str, nbytes: int, **kwargs: object) -> None:
    with Session(engine) as session, obs.scope(organization=ORG):
        with obs.metered_storage(session, object_id=object_id, bytes=nbytes, **kwargs):  # type: ignore[arg-type]
            pass
        session.commit()


def release(engine: sa.Engine, object_id: str) -> None:
    with Session(engine) as session:
        with obs.metered_storage(session, object_id=object_id, release=True):
            pass
        session.commit()


class TestCharge:
    def test_charge_counts_bytes_and_writes_the_ledger(self, engine: sa.Engine) -> None:
        """A charge adds its bytes to the owner's counter and records the object."""
        charge(engine, "doc_1", 1234)
        assert usage(engine) == 1234
        assert ledger(engine) == {"doc_1": (ORG, 1234)}

    def test_quota_equality_is_allowed(self, engine: sa.Engine) -> None:
        """Charges that fill the quota exactly succeed."""
        charge(engine, "a", 60, quota=100)
        charge(engine, "b", 40, quota=100)
        assert usage(engine) == 100

    def test_over_quota_raises_before_the_body(self, engine: sa.Engine) -> None:
        """Over quota raises QuotaExceeded with the numbers; the body does not run."""
        charge(engine, "a", 60, quota=100)
        ran = []
        with Session(engine) as session, obs.scope(organization=ORG):
            with pytest.raises(obs.QuotaExceeded) as info:
                with obs.metered_storage(session, object_id="b", bytes=41, quota=100):
                    ran.append(True)
            session.commit()
        assert ran == []
        error = info.value
        assert (error.owner, error.used, error.limit, error.requested) == (ORG, 60, 100, 41)
        assert usage(engine) == 60
        assert ledger(engine) == {"a": (ORG, 60)}

    def test_first_charge_of_a_new_owner_is_checked(self, engine: sa.Engine) -> None:
        """An owner without a counter row cannot start above its quota."""
        with pytest.raises(obs.QuotaExceeded) as info:
            charge(engine, "big", 11, quota=10)
        assert (info.value.used, info.value.requested) == (0, 11)
        assert usage(engine) == 0
        assert ledger(engine) == {}

    def test_recharge_charges_only_the_growth(self, engine: sa.Engine) -> None:
        """Re-charging an object sets its new size and counts the difference once."""
        charge(engine, "a", 100)
        charge(engine, "a", 100)  # a retried upload
        charge(engine, "a", 150, quota=150)  # a replaced file: growth 50 fits exactly
        assert usage(engine) == 150
        assert ledger(engine) == {"a": (ORG, 150)}

    def test_recharge_that_grows_past_the_quota_is_refused_with_the_growth(
        self, engine: sa.Engine
    ) -> None:
        """The refusal of a re-charge reports the growth, and the old size stays."""
        charge(engine, "a", 100)
        with pytest.raises(obs.QuotaExceeded) as info:
            charge(engine, "a", 130, quota=120)
        assert (info.value.used, info.value.requested) == (100, 30)
        assert ledger(engine) == {"a": (ORG, 100)}

    def test_shrinking_recharge_succeeds_above_a_lowered_quota(self, engine: sa.Engine) -> None:
        """A re-charge that does not grow always succeeds, even above the quota."""
        charge(engine, "a", 100)
        charge(engine, "b", 100)
        charge(engine, "a", 80, quota=50)
        charge(engine, "b", 100, quota=50)
        assert usage(engine) == 180
        assert ledger(engine) == {"a": (ORG, 80), "b": (ORG, 100)}

    def test_charging_under_another_owner_moves_the_object(self, engine: sa.Engine) -> None:
        """The old owner gets its bytes back and the new owner is charged the full size."""
        charge(engine, "a", 100)
        charge(engine, "a", 70, owner="org_2")
        assert (usage(engine, ORG), usage(engine, "org_2")) == (0, 70)
        assert ledger(engine) == {"a": ("org_2", 70)}

    def test_a_move_is_checked_against_the_new_owners_quota(self, engine: sa.Engine) -> None:
        """Moving an object into a full owner is refused and leaves it where it was."""
        charge(engine, "a", 100)
        with pytest.raises(obs.QuotaExceeded):
            charge(engine, "a", 100, owner="org_2", quota=99)
        assert (usage(engine, ORG), usage(engine, "org_2")) == (100, 0)
        assert ledger(engine) == {"a": (ORG, 100)}


class TestQuotaSource:
    def test_configured_int_quota_applies(self, database_url: str) -> None:
        """configure(storage_quota=int) is the quota when the call gives none."""
        obs.configure(database=database_url, storage_quota=10)
        app = sa.create_engine(database_url)
        with pytest.raises(obs.QuotaExceeded):
            charge(app, "a", 11)
        charge(app, "a", 11, quota=11)  # the call's quota wins
        assert usage(app) == 11
        app.dispose()

    def test_configured_callable_quota_is_asked_per_owner(self, database_url: str) -> None:
        """A callable quota is called with the owner; None means unlimited."""
        asked: list[str] = []

        def quota_of(owner: str) -> int | None:
            asked.append(owner)
            return 5 if owner == ORG else None

        obs.configure(database=database_url, storage_quota=quota_of)
        app = sa.create_engine(database_url)
        with pytest.raises(obs.QuotaExceeded):
            charge(app, "a", 6)
        charge(app, "b", 10**12, owner="org_big")
        assert asked == [ORG, "org_big"]
        assert usage(app, "org_big") == 10**12
        app.dispose()

    def test_a_callable_returning_nonsense_is_a_configuration_error(self, sqlite_url: str) -> None:
        """A quota callable must return an int >= 0 or None."""
        obs.configure(database=sqlite_url, storage_quota=lambda owner: -1)
        app = sa.create_engine(sqlite_url)
        with pytest.raises(obs.ConfigurationError, match="storage_quota callable"):
            charge(app, "a", 1)
        app.dispose()

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"bytes": -1},
            {"bytes": True},
            {"bytes": None},
            {"bytes": 1, "quota": -5},
            {"bytes": "1"},
        ],
    )
    def test_bad_arguments_are_configuration_errors(self, kwargs: dict[str, object]) -> None:
        """Sizes and quotas are ints >= 0; the mistake is named."""
        with pytest.raises(obs.ConfigurationError):
            obs.metered_storage(None, object_id="a", **kwargs)  # type: ignore[arg-type]

    def test_release_takes_no_size(self) -> None:
        """release=True with bytes= is a ConfigurationError: the ledger knows the size."""
        with pytest.raises(obs.ConfigurationError, match="ledger"):
            obs.metered_storage(None, object_id="a", bytes=3, release=True)


class TestRelease:
    def test_release_gives_back_what_was_charged(self, engine: sa.Engine) -> None:
        """A release deletes the ledger row and subtracts its bytes."""
        charge(engine, "a", 100)
        charge(engine, "b", 30)
        release(engine, "a")
        assert usage(engine) == 30
        assert ledger(engine) == {"b": (ORG, 30)}

    def test_retried_and_never_charged_releases_change_nothing(self, engine: sa.Engine) -> None:
        """Releasing twice, or an object never charged, decrements nothing."""
        charge(engine, "a", 100)
        charge(engine, "b", 30)
        release(engine, "a")
        release(engine, "a")
        release(engine, "synced_from_connector")
        assert usage(engine) == 30

    def test_release_uses_the_ledger_owner(self, engine: sa.Engine) -> None:
        """The owner recorded at charge time is credited, whatever the scope says now."""
        charge(engine, "a", 100, owner="org_2")
        with Session(engine) as session, obs.scope(organization="org_other"):
            with obs.metered_storage(session, object_id="a", release=True):
                pass
            session.commit()
        assert usage(engine, "org_2") == 0

    def test_release_never_goes_below_zero(self, engine: sa.Engine) -> None:
        """A drifted counter smaller than the object stops at zero."""
        charge(engine, "a", 100)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE obs_storage_usage SET bytes = 10"))
        release(engine, "a")
        assert usage(engine) == 0


class TestBodyFailure:
    def test_swallowed_body_failure_then_commit_charges_nothing(self, engine: sa.Engine) -> None:
        """The charge is undone even when the caller swallows the error and commits."""
        charge(engine, "a", 10)
        with Session(engine) as session, obs.scope(organization=ORG):
            try:
                with obs.metered_storage(session, object_id="b", bytes=5):
                    fail()
            except RuntimeError:
                pass
            session.commit()
        assert usage(engine) == 10
        assert ledger(engine) == {"a": (ORG, 10)}

    def test_failed_recharge_and_move_restore_the_previous_state(self, engine: sa.Engine) -> None:
        """A failing body puts back the old size and the old owner exactly."""
        charge(engine, "a", 10)
        for kwargs in ({"bytes": 50}, {"bytes": 4}, {"bytes": 50, "owner": "org_2"}):
            with Session(engine) as session, obs.scope(organization=ORG):
                with pytest.raises(RuntimeError):
                    with obs.metered_storage(session, object_id="a", **kwargs):  # type: ignore[arg-type]
                        raise RuntimeError
                session.commit()
        assert (usage(engine), usage(engine, "org_2")) == (10, 0)
        assert ledger(engine) == {"a": (ORG, 10)}

    def test_failed_release_body_keeps_the_charge(self, engine: sa.Engine) -> None:
        """A release whose body fails (the delete did not happen) gives nothing back."""
        charge(engine, "a", 10)
        with Session(engine) as session:
            with pytest.raises(RuntimeError):
                with obs.metered_storage(session, object_id="a", release=True):
                    raise RuntimeError
            session.commit()
        assert usage(engine) == 10
        assert ledger(engine) == {"a": (ORG, 10)}
        release(engine, "a")  # the restored row releases normally afterwards
        assert usage(engine) == 0

    def test_failed_flush_in_the_body_is_undone_too(self, engine: sa.Engine) -> None:
        """A database error in the body rolls back to the savepoint; the session stays usable."""
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE app_docs (id VARCHAR(10) PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO app_docs VALUES ('taken')"))
        with Session(engine) as session, obs.scope(organization=ORG):
            with pytest.raises(sa.exc.IntegrityError):
                with obs.metered_storage(session, object_id="b", bytes=5):
                    session.execute(sa.text("INSERT INTO app_docs VALUES ('taken')"))
            charge_ok = obs.storage_usage(ORG, session)
            session.commit()
        assert charge_ok == 0
        assert usage(engine) == 0
        assert ledger(engine) == {}

    def test_rollback_undoes_the_charge(self, engine: sa.Engine) -> None:
        """A rolled-back transaction leaves neither counter nor ledger behind."""
        with Session(engine) as session, obs.scope(organization=ORG):
            with obs.metered_storage(session, object_id="a", bytes=5):
                pass
            assert obs.storage_usage(ORG, session) == 5  # visible inside the transaction
            session.rollback()
        assert usage(engine) == 0
        assert ledger(engine) == {}

    def test_rollback_undoes_the_release(self, engine: sa.Engine) -> None:
        """A rolled-back release leaves the charge in place."""
        charge(engine, "a", 5)
        with Session(engine) as session:
            with obs.metered_storage(session, object_id="a", release=True):
                pass
            session.rollback()
        assert (usage(engine), ledger(engine)) == (5, {"a": (ORG, 5)})

    def test_after_commit_runs_only_after_commit(self, engine: sa.Engine) -> None:
        """after_commit callbacks run after the commit and never after a rollback."""
        charge(engine, "a", 5)
        charge(engine, "b", 5)
        deleted: list[str] = []
        for object_id, commit in (("a", False), ("b", True)):
            with Session(engine) as session:
                with obs.metered_storage(session, object_id=object_id, release=True):
                    obs.after_commit(session, lambda o=object_id: deleted.append(o))  # type: ignore[misc]
                assert deleted == []
                session.commit() if commit else session.rollback()
        assert deleted == ["b"]
        assert ledger(engine) == {"a": (ORG, 5)}


class TestSqliteSavepointFirst:
    """pysqlite's default mode sends BEGIN only before DML: a SAVEPOINT that opened the
    transaction would commit on RELEASE. The charge (a write) comes first instead."""

    def test_metering_as_the_first_statement_rolls_back(self, sqlite_url: str) -> None:
        """A charge and release that are the transaction's first statements still roll back."""
        obs.configure(database=sqlite_url)
        app = sa.create_engine(sqlite_url)  # the default driver mode, no BEGIN recipe
        charge(app, "kept", 7)
        for kwargs in ({"object_id": "a", "bytes": 5}, {"object_id": "kept", "release": True}):
            with Session(app) as session, obs.scope(organization=ORG):
                with obs.metered_storage(session, **kwargs):  # type: ignore[arg-type]
                    pass
                session.rollback()
        assert (usage(app), ledger(app)) == (7, {"kept": (ORG, 7)})
        app.dispose()

    def test_first_statement_body_failure_then_rollback_keeps_nothing(
        self, sqlite_url: str
    ) -> None:
        """A failed body whose savepoint came right after the charge escapes nothing either."""
        obs.configure(database=sqlite_url)
        app = sa.create_engine(sqlite_url)
        with Session(app) as session, obs.scope(organization=ORG):
            with pytest.raises(RuntimeError):
                with obs.metered_storage(session, object_id="a", bytes=5):
                    session.execute(sa.text("SELECT 1"))
                    raise RuntimeError
            session.rollback()
        assert (usage(app), ledger(app)) == (0, {})
        app.dispose()


class TestOwner:
    def test_owner_defaults_to_organization_then_actor(self, engine: sa.Engine) -> None:
        """The scope's organization owns the charge; without one, the actor's id does."""
        with Session(engine) as session:
            with obs.scope(actor=obs.Actor.user("u_1"), organization="org_9"):
                with obs.metered_storage(session, object_id="a", bytes=1):
                    pass
            with obs.scope(actor=obs.Actor.user("u_1"), workspace="ws_personal"):
                with obs.metered_storage(session, object_id="b", bytes=2):
                    pass
            with obs.metered_storage(session, object_id="c", bytes=3, owner="explicit"):
                pass
            session.commit()
        assert ledger(engine) == {"a": ("org_9", 1), "b": ("u_1", 2), "c": ("explicit", 3)}

    def test_no_owner_is_a_configuration_error(self, engine: sa.Engine) -> None:
        """Neither organization nor an actor with an id: ConfigurationError, nothing charged."""
        with Session(engine) as session, obs.scope(actor=obs.Actor.anonymous()):
            with pytest.raises(obs.ConfigurationError, match="owner="):
                with obs.metered_storage(session, object_id="a", bytes=1):
                    pass
            session.commit()
        assert ledger(engine) == {}


class TestScopeAndSuppression:
    def test_audited_calls_in_the_body_join_the_transaction(self, engine: sa.Engine) -> None:
        """The body runs with the session in scope: its audit records follow commit/rollback."""

        @obs.audited("file.uploaded")
        def upload() -> None:
            pass

        with capture() as cap:
            for commit in (False, True):
                with Session(engine) as session, obs.scope(organization=ORG):
                    with obs.metered_storage(session, object_id=f"a{commit}", bytes=1):
                        upload()
                    assert cap.audits == []
                    session.commit() if commit else session.rollback()
        assert [a["action"] for a in cap.audits] == ["file.uploaded"]

    def test_suppressed_still_meters(self, engine: sa.Engine) -> None:
        """obs.suppressed() silences records only: inside it the quota is checked (over it,
        QuotaExceeded and the body does not run) and a charge that fits is counted."""
        ran = []
        with Session(engine) as session, obs.scope(organization=ORG), obs.suppressed():
            with pytest.raises(obs.QuotaExceeded):
                with obs.metered_storage(session, object_id="a", bytes=10, quota=1):
                    ran.append("a")
            with obs.metered_storage(session, object_id="b", bytes=1, quota=1):
                ran.append("b")
            session.commit()
        assert ran == ["b"]
        assert (usage(engine), ledger(engine)) == (1, {"b": (ORG, 1)})

    def test_metering_sql_failure_raises(self, sqlite_url: str) -> None:
        """Accounting errors are the caller's: missing tables raise instead of being swallowed."""
        app = sa.create_engine(sqlite_url)  # obs_sdk not configured: no obs_ tables here
        with Session(app) as session, pytest.raises(sa.exc.OperationalError):
            with obs.metered_storage(session, object_id="a", bytes=1, owner="o"):
                pass
        app.dispose()


class TestAuditStorage:
    def test_charges_and_releases_are_audited_in_the_transaction(self, database_url: str) -> None:
        """audit_storage=True writes storage.charged/released with sizes and the usage after."""
        obs.configure(database=database_url, audit_storage=True)
        app = sa.create_engine(database_url)
        with capture() as cap, obs.scope(actor=obs.Actor.user("u_1"), organization=ORG):
            with Session(app) as session:
                with obs.metered_storage(session, object_id="a", bytes=100):
                    pass
                with obs.metered_storage(session, object_id="b", bytes=20):
                    pass
                session.rollback()
            assert cap.audits == []
            charge(app, "a", 100)
            charge(app, "a", 120)
            release(app, "a")
            release(app, "a")  # nothing released: no record
        audits = [
            (a["action"], a["resource_type"], a["resource_id"], a["metadata"]) for a in cap.audits
        ]
        assert audits == [
            (
                "storage.charged",
                "storage_object",
                "a",
                {"bytes": 100, "growth": 100, "owner": ORG, "usage": 100},
            ),
            (
                "storage.charged",
                "storage_object",
                "a",
                {"bytes": 120, "growth": 20, "owner": ORG, "usage": 120},
            ),
            ("storage.released", "storage_object", "a", {"bytes": 120, "owner": ORG, "usage": 0}),
        ]
        events = [(e["event"], e["properties"]["usage"]) for e in cap.events]
        assert events == [
            ("storage_charged", 100),
            ("storage_charged", 120),
            ("storage_released", 0),
        ]
        app.dispose()

    def test_audit_rows_commit_with_the_charge(self, database_url: str) -> None:
        """Without capture, the storage.charged row is in the audit table after the commit."""
        obs.configure(database=database_url, audit_storage=True)
        app = sa.create_engine(database_url)
        with obs.scope(actor=obs.Actor.user("u_1")):
            charge(app, "a", 3)
        records = obs.audit_log(app, action="storage.charged")
        assert [(r.resource_id, r.metadata["usage"]) for r in records] == [("a", 3)]
        app.dispose()


class TestUsageAndReconcile:
    def test_storage_usage_reads_in_or_outside_a_session(self, engine: sa.Engine) -> None:
        """storage_usage sees a session's uncommitted charge; without one, what is committed."""
        with Session(engine) as session, obs.scope(organization=ORG):
            with obs.metered_storage(session, object_id="a", bytes=9):
                pass
            assert obs.storage_usage(ORG, session) == 9
            assert obs.storage_usage(obs.Actor.user(ORG), session) == 9
            session.commit()
        assert obs.storage_usage(ORG) == 9
        assert obs.storage_usage("nobody") == 0

    def test_storage_usage_needs_a_database(self) -> None:
        """Without configure() and without a session, the error says what to do."""
        with pytest.raises(obs.ConfigurationError, match="configure"):
            obs.storage_usage(ORG)

    def test_reconcile_reports_and_repairs_drift(self, engine: sa.Engine) -> None:
        """Drifted counters are reported as StorageDrift and repaired to the ledger sum."""
        charge(engine, "a", 10)
        charge(engine, "b", 5, owner="org_2")
        charge(engine, "c", 1, owner="org_3")
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE obs_storage_usage SET bytes = 99 WHERE owner = :o"), {"o": ORG}
            )
            conn.execute(sa.text("DELETE FROM obs_storage_usage WHERE owner = 'org_2'"))
            conn.execute(sa.text("INSERT INTO obs_storage_usage VALUES ('ghost', 4)"))
        with Session(engine) as session:
            found = obs.reconcile_storage(session)
            session.commit()
        expected = [
            obs.StorageDrift("ghost", 4, 0),
            obs.StorageDrift(ORG, 99, 10),
            obs.StorageDrift("org_2", 0, 5),
        ]
        assert found == expected
        assert usage(engine) == 99  # reporting alone changes nothing
        with Session(engine) as session:
            assert obs.reconcile_storage(session, repair=True) == expected
            session.commit()
        with Session(engine) as session:
            assert obs.reconcile_storage(session) == []
        assert (usage(engine), usage(engine, "org_2"), usage(engine, "ghost")) == (10, 5, 0)


def _async_url(url: str) -> str:
    parsed = make_url(url)
    driver = "aiosqlite" if parsed.get_backend_name() == "sqlite" else "psycopg_async"
    return parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


class TestAsyncSession:
    async def test_async_with_charges_refuses_undoes_and_releases(
        self, engine: sa.Engine, database_url: str
    ) -> None:
        """AsyncSession (aiosqlite, psycopg async) works with `async with`, same guarantees."""
        async_engine = create_async_engine(_async_url(database_url))
        try:
            async with AsyncSession(async_engine) as session:
                with obs.scope(organization=ORG):
                    async with obs.metered_storage(session, object_id="a", bytes=60, quota=100):
                        pass
                    with pytest.raises(obs.QuotaExceeded):
                        async with obs.metered_storage(session, object_id="b", bytes=41, quota=100):
                            pass
                    with pytest.raises(RuntimeError):
                        async with obs.metered_storage(session, object_id="c", bytes=1):
                            raise RuntimeError
                    async with obs.metered_storage(session, object_id="d", bytes=40, quota=100):
                        pass
                    async with obs.metered_storage(session, object_id="a", release=True):
                        pass
                await session.commit()
        finally:
            await async_engine.dispose()
        assert (usage(engine), ledger(engine)) == (40, {"d": (ORG, 40)})

    async def test_plain_with_on_an_async_session_says_what_to_do(self) -> None:
        """`with` on an AsyncSession is a ConfigurationError pointing to `async with`."""
        async_engine = create_async_engine("sqlite+aiosqlite://")
        async with AsyncSession(async_engine) as session:
            with pytest.raises(obs.ConfigurationError, match="async with"):
                with obs.metered_storage(session, object_id="a", bytes=1, owner="o"):
                    pass
        await async_engine.dispose()


class TestQuotaExceededMessage:
    def test_message_has_human_readable_sizes(self) -> None:
        """The message names the owner and sizes in KiB/MiB/GiB."""
        error = obs.QuotaExceeded(
            owner="org_1", used=5 * 2**30, limit=5 * 2**30, requested=3 * 2**20
        )
        assert str(error) == (
            "storage quota exceeded for 'org_1': 5.0 GiB used of 5.0 GiB, 3.0 MiB more requested"
        )


class LedgerMachine(RuleBasedStateMachine):
    """Any sequence of charges, re-charges, moves, releases, rollbacks and failing bodies."""

    def __init__(self) -> None:
        super().__init__()
        self.engine = _machine_engine()
        with self.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM obs_storage_usage"))
            conn.execute(sa.text("DELETE FROM obs_storage_objects"))
        self.model: dict[str, tuple[str, int]] = {}

    def _used(self, owner: str) -> int:
        return sum(size for who, size in self.model.values() if who == owner)

    def _expected(self, object_id: str, owner: str, size: int, quota: int | None) -> bool:
        old = self.model.get(object_id)
        growth = size - (old[1] if old and old[0] == owner else 0)
        return quota is None or growth <= 0 or self._used(owner) + growth <= quota

    @rule(
        object_id=st.sampled_from(["a", "b", "c"]),
        owner=st.sampled_from(["o1", "o2"]),
        size=st.integers(0, 60),
        quota=st.none() | st.integers(0, 100),
        outcome=st.sampled_from(["commit", "rollback", "body_fails"]),
    )
    def charge(
        self, object_id: str, owner: str, size: int, quota: int | None, outcome: str
    ) -> None:
        fits = self._expected(object_id, owner, size, quota)
        with Session(self.engine) as session:
            try:
                with obs.metered_storage(
                    session, object_id=object_id, bytes=size, owner=owner, quota=quota
                ):
                    if outcome == "body_fails":
                        fail()
            except obs.QuotaExceeded:
                assert not fits
            except RuntimeError:
                assert fits
            else:
                assert fits
            if outcome == "rollback":
                session.rollback()
            else:
                session.commit()
        if fits and outcome == "commit":
            self.model[object_id] = (owner, size)

    @rule(
        object_id=st.sampled_from(["a", "b", "c", "never"]),
        times=st.integers(1, 2),
        outcome=st.sampled_from(["commit", "rollback", "body_fails"]),
    )
    def release(self, object_id: str, times: int, outcome: str) -> None:
        for _ in range(times):  # times == 2: a retried delete
            with Session(self.engine) as session:
                try:
                    with obs.metered_storage(session, object_id=object_id, release=True):
                        if outcome == "body_fails":
                            fail()
                except RuntimeError:
                    pass
                session.rollback() if outcome == "rollback" else session.commit()
        if outcome == "commit":
            self.model.pop(object_id, None)

    @invariant()
    def usage_equals_the_ledger(self) -> None:
        assert ledger(self.engine) == self.model
        for owner in ("o1", "o2"):
            assert usage(self.engine, owner) == self._used(owner) >= 0


_MACHINE_ENGINE: list[sa.Engine] = []


def _machine_engine() -> sa.Engine:
    # One SQLite file (pysqlite default mode) for every example: tables are emptied instead.
    if not _MACHINE_ENGINE:
        path = Path(tempfile.mkdtemp(prefix="obs_ledger_")) / "ledger.db"
        created = sa.create_engine(f"sqlite:///{path}")
        obs.create_tables(created)
        _MACHINE_ENGINE.append(created)
    return _MACHINE_ENGINE[0]


class TestLedgerStateMachine:
    def test_usage_always_equals_the_ledger(self) -> None:
        """Hypothesis: usage == sum(ledger) >= 0 for every owner after any sequence."""
        LedgerMachine.TestCase().runTest()
