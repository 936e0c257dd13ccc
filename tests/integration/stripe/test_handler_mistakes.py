"""WebhookHandler refuses, at construction, a session argument that would fail every webhook."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import obs_sdk as obs
from obs_sdk.integrations.stripe import WebhookHandler
from tests.support.stripe_signing import TEST_SECRET


class MySession(Session):
    """An app's Session subclass: still a class, not a factory bound to a database."""


class TestSessionmakerMistakes:
    @pytest.mark.parametrize("given", [Session, MySession, AsyncSession], ids=lambda c: c.__name__)
    def test_a_session_class(self, given: type) -> None:
        """The Session class opens sessions bound to nothing: every webhook would be a 500."""
        with pytest.raises(obs.ConfigurationError) as error:
            WebhookHandler(secret=TEST_SECRET, sessionmaker=given)
        message = str(error.value)
        assert f"the {given.__name__} class" in message
        assert "sessionmaker(bind=engine)" in message

    def test_a_session_instance(self) -> None:
        """One Session for every delivery cannot give each its own transaction."""
        engine = sa.create_engine("sqlite://")
        with Session(engine) as session, pytest.raises(obs.ConfigurationError) as error:
            WebhookHandler(secret=TEST_SECRET, sessionmaker=session)  # type: ignore[arg-type]
        assert "a Session instance" in str(error.value)
        assert "sessionmaker(bind=engine)" in str(error.value)

    def test_factories_are_accepted(self) -> None:
        """sessionmaker, async_sessionmaker, scoped_session and a plain function all work."""
        engine = sa.create_engine("sqlite://")
        async_engine = create_async_engine("sqlite+aiosqlite://")
        for factory in (
            sessionmaker(bind=engine),
            async_sessionmaker(async_engine),
            scoped_session(sessionmaker(bind=engine)),
            lambda: Session(engine),
        ):
            WebhookHandler(secret=TEST_SECRET, sessionmaker=factory)
