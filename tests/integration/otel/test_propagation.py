"""Scope propagation: inject/extract over real HTTP (httpx to a Flask app on loopback)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify, request
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from werkzeug.serving import make_server

import obs_sdk as obs
from obs_sdk.testing import capture

SECRET = "scope-secret-for-tests"
OBS_HEADERS = {
    "obs-workspace",
    "obs-organization",
    "obs-actor-type",
    "obs-actor-id",
    "obs-request-id",
}
SIGNED_HEADERS = OBS_HEADERS | {"obs-issued-at", "obs-signature"}
SERVER_SCOPE = {
    "actor_id": "svc_files",
    "workspace_id": "ws_server",
    "organization_id": "org_server",
}
PERSONAL = ("Ada Lovelace", "ada@example.com", "203.0.113.5", "curl/8.5")


@obs.audited("file.downloaded", resource=obs.Resource("file", "{file_id}"))
def download(file_id: str) -> None:
    """Leave one audit record for *file_id*."""


def wire_sign(headers: dict[str, str], secret: str, issued_at: int) -> dict[str, str]:
    """Sign *headers* by the wire format docs/propagation.md documents (any issue time)."""
    lines = ["obs-scope-v1"]
    for name in ("obs-workspace", "obs-organization", "obs-actor-type", "obs-actor-id"):
        lines.append(f"{name}:{headers.get(name, '')}")
    lines.append(f"obs-request-id:{headers.get('obs-request-id', '')}")
    lines.append(f"obs-issued-at:{issued_at}")
    digest = hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()
    return {**headers, "obs-issued-at": str(issued_at), "obs-signature": f"v1={digest}"}


def receiving_app() -> Flask:
    """The receiving service: its own scope, then the caller's ids from the headers."""
    app = Flask(__name__)

    @app.post("/files/<file_id>/download")
    def endpoint(file_id: str) -> Any:
        trust = request.args.get("trust") == "1"
        trust_tenant = request.args.get("trust_tenant") == "1"
        secret = SECRET if request.args.get("signed") == "1" else None
        own = obs.scope(
            actor=obs.Actor.service("svc_files"),
            workspace="ws_server",
            organization="org_server",
            ip=request.remote_addr,
        )
        carried = obs.propagation.extract(
            request.headers, trust_actor=trust, trust_tenant=trust_tenant, secret=secret
        )
        with own, carried:
            download(file_id)
        return jsonify({"headers": dict(request.headers)})

    return app


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    """Serve the receiving app on a real loopback socket for the module."""
    server = make_server("127.0.0.1", 0, receiving_app(), threaded=True)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        serving.join()
        server.server_close()


def call(url: str, headers: dict[str, str], **params: str) -> dict[str, str]:
    """POST to the receiving service; return the headers it saw (lower-case names)."""
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{url}/files/f_1/download", headers=headers, params=params)
    response.raise_for_status()
    return {k.lower(): v for k, v in response.json()["headers"].items()}


def ada_scope(**overrides: Any) -> Any:
    """The calling service's scope: a signed-in user with personal data."""
    fields: dict[str, Any] = {
        "actor": obs.Actor.user("u_1", name="Ada Lovelace", email="ada@example.com"),
        "workspace": "ws_1",
        "organization": "org_1",
        "ip": "203.0.113.5",
        "user_agent": "curl/8.5",
        "request_id": "req_9",
    }
    fields.update(overrides)
    return obs.scope(**fields)


def who(record: dict[str, Any]) -> dict[str, Any]:
    """Return the scope fields of an audit record that propagation may touch."""
    keys = ("actor_type", "actor_id", "actor_name", "actor_email", "workspace_id")
    return {k: record[k] for k in (*keys, "organization_id", "request_id", "ip", "user_agent")}


class TestRoundTripOverHttp:
    """httpx carries the ids to a Flask service on 127.0.0.1, beside traceparent."""

    def test_ids_arrive_and_personal_data_does_not(self, service_url: str) -> None:
        """A signed, trusted round trip applies every id; names, email, ip and UA stay home."""
        tracer = TracerProvider().get_tracer("caller")
        headers: dict[str, str] = {}
        with tracer.start_as_current_span("call files") as span, ada_scope():
            obs.propagation.inject(headers, secret=SECRET)
            TraceContextTextMapPropagator().inject(headers)
        with capture() as captured:
            seen = call(service_url, headers, trust="1", signed="1")
        assert who(captured.audits[0]) == {
            "actor_type": "user",
            "actor_id": "u_1",
            "actor_name": None,
            "actor_email": None,
            "workspace_id": "ws_1",
            "organization_id": "org_1",
            "request_id": "req_9",
            "ip": "127.0.0.1",  # the receiver's own view of its client
            "user_agent": None,
        }
        assert set(seen) >= SIGNED_HEADERS
        trace_id = format(span.get_span_context().trace_id, "032x")
        assert trace_id in seen["traceparent"]
        leaked = [v for v in seen.values() for p in PERSONAL if p in v]
        assert leaked == []

    def test_untrusted_actor_is_ignored(self, service_url: str) -> None:
        """Without trust_actor the receiver keeps its own actor; trusted tenant ids arrive."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers)
        with capture() as captured:
            call(service_url, headers, trust_tenant="1")
        record = captured.audits[0]
        assert (record["actor_type"], record["actor_id"]) == ("service", "svc_files")
        assert (record["workspace_id"], record["organization_id"]) == ("ws_1", "org_1")

    def test_workspace_and_organization_arrive_as_one_unit(self, service_url: str) -> None:
        """A personal workspace replaces the receiver's pair: it never inherits an org."""
        headers: dict[str, str] = {}
        with ada_scope(workspace="ws_personal", organization=None):
            obs.propagation.inject(headers, secret=SECRET)
        with capture() as captured:
            call(service_url, headers, signed="1")
        record = captured.audits[0]
        assert (record["workspace_id"], record["organization_id"]) == ("ws_personal", None)

    @pytest.mark.swallows_internal_errors
    def test_unsigned_tenant_needs_trust_tenant(self, service_url: str) -> None:
        """Unsigned, untrusted tenant ids are dropped and counted: the receiver's pair stays.

        Any client can write obs-workspace; without a secret or trust_tenant=True it would
        choose the tenant its records are filed under. The request id still arrives.
        """
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers)
        with capture() as captured:
            call(service_url, headers, trust="1")
        record = captured.audits[0]
        assert (record["workspace_id"], record["organization_id"]) == ("ws_server", "org_server")
        assert (record["actor_id"], record["request_id"]) == ("u_1", "req_9")
        assert obs.stats()["internal_errors"] == 1

    def test_no_headers_keep_the_receivers_scope(self, service_url: str) -> None:
        """A call from outside any scope carries nothing and changes nothing there."""
        headers: dict[str, str] = {}
        obs.propagation.inject(headers, secret=SECRET)
        with capture() as captured:
            call(service_url, headers, trust="1", signed="1")
        record = captured.audits[0]
        assert headers == {}
        assert {k: record[k] for k in SERVER_SCOPE} == SERVER_SCOPE
        assert obs.stats()["internal_errors"] == 0


@pytest.mark.swallows_internal_errors
class TestRejectedSignatures:
    """A signature that does not hold applies nothing, and is counted."""

    def signed_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers, secret=SECRET)
        return headers

    def assert_rejected(self, url: str, headers: dict[str, str]) -> None:
        with capture() as captured:
            call(url, headers, trust="1", signed="1")
        record = captured.audits[0]
        assert {k: record[k] for k in SERVER_SCOPE} == SERVER_SCOPE
        assert record["request_id"] is None
        assert obs.stats()["internal_errors"] == 1

    def test_tampered_actor_is_rejected(self, service_url: str) -> None:
        """Changing the actor id after signing voids the whole carrier."""
        headers = {**self.signed_headers(), "obs-actor-id": "u_admin"}
        self.assert_rejected(service_url, headers)

    def test_tampered_issue_time_is_rejected(self, service_url: str) -> None:
        """The issue time is signed too, so an old message cannot be made fresh."""
        headers = self.signed_headers()
        headers["obs-issued-at"] = str(int(headers["obs-issued-at"]) + 1)
        self.assert_rejected(service_url, headers)

    def test_expired_signature_is_rejected(self, service_url: str) -> None:
        """A correctly signed carrier older than max_age is not replayed."""
        headers = {"obs-workspace": "ws_1", "obs-actor-type": "user", "obs-actor-id": "u_1"}
        self.assert_rejected(service_url, wire_sign(headers, SECRET, int(time.time()) - 600))

    def test_future_issue_time_is_rejected(self, service_url: str) -> None:
        """An issue time an hour ahead would outlive max_age; it is refused."""
        headers = {"obs-workspace": "ws_1", "obs-actor-type": "user", "obs-actor-id": "u_1"}
        self.assert_rejected(service_url, wire_sign(headers, SECRET, int(time.time()) + 3600))

    def test_unsigned_carrier_is_rejected_when_a_secret_is_required(self, service_url: str) -> None:
        """A receiver that asks for a signature ignores unsigned ids."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers)
        self.assert_rejected(service_url, headers)

    def test_another_secret_is_rejected(self, service_url: str) -> None:
        """A carrier signed with a different secret does not verify."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers, secret="someone-elses-secret")
        self.assert_rejected(service_url, headers)

    def test_rejection_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """The obs_sdk logger says why the carrier was ignored."""
        headers = {**self.signed_headers(), "obs-workspace": "ws_other"}
        with obs.propagation.extract(headers, secret=SECRET):
            pass
        assert "does not verify" in caplog.text


class TestSignatures:
    """Signatures that hold: age within max_age, and secret rotation."""

    def test_hand_signed_carrier_within_max_age_is_applied(self) -> None:
        """The documented wire format verifies; 100 s old passes max_age=300."""
        headers = wire_sign(
            {"obs-workspace": "ws_1", "obs-actor-type": "service", "obs-actor-id": "svc_a"},
            SECRET,
            int(time.time()) - 100,
        )
        with obs.propagation.extract(headers, trust_actor=True, secret=SECRET):
            current = obs.current_scope()
        assert (current.workspace, current.actor) == ("ws_1", obs.Actor.service("svc_a"))

    def test_rotated_secrets_accept_the_old_one(self) -> None:
        """extract(secret=[new, old]) verifies carriers signed with either."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers, secret="old-secret")
        with obs.propagation.extract(headers, trust_actor=True, secret=["new", "old-secret"]):
            actor = obs.current_scope().actor
        assert actor == obs.Actor.user("u_1")

    def test_signed_tenant_needs_no_trust_flag(self) -> None:
        """A verified signature is what trust_tenant stands in for: the tenant applies."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers, secret=SECRET)
        with obs.propagation.extract(headers, secret=SECRET):
            current = obs.current_scope()
        assert (current.workspace, current.organization) == ("ws_1", "org_1")

    @pytest.mark.swallows_internal_errors
    def test_trust_tenant_does_not_waive_a_required_signature(self) -> None:
        """With a secret, an unsigned tenant is rejected even under trust_tenant=True."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers)
        with obs.scope(workspace="ws_own"):
            with obs.propagation.extract(headers, secret=SECRET, trust_tenant=True):
                current = obs.current_scope()
        assert (current.workspace, current.organization) == ("ws_own", None)
        assert obs.stats()["internal_errors"] == 1

    @pytest.mark.swallows_internal_errors
    def test_rejected_tenant_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """The obs_sdk logger says why the tenant was ignored and what to pass."""
        with obs.propagation.extract({"obs-workspace": "ws_victim"}):
            assert obs.current_scope().workspace is None
        assert "trust_tenant=True" in caplog.text

    def test_signed_but_untrusted_actor_is_ignored(self) -> None:
        """A valid signature proves origin; applying the actor still needs trust_actor."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers, secret=SECRET)
        with obs.propagation.extract(headers, secret=SECRET):
            current = obs.current_scope()
        assert (current.actor, current.workspace) == (None, "ws_1")


# str.isprintable(): no control, format, private-use, unassigned or separator except " ".
printable_id = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
    | st.just(" "),
    min_size=1,
    max_size=60,
)


class TestHeaderValues:
    """Values are encoded to safe header text and checked on the way in."""

    @given(
        workspace=printable_id,
        organization=st.none() | printable_id,
        actor_id=printable_id,
        request_id=printable_id,
    )
    def test_any_printable_ids_round_trip(
        self, workspace: str, organization: str | None, actor_id: str, request_id: str
    ) -> None:
        """Unicode, spaces and separators survive inject/extract unchanged."""
        headers: dict[str, str] = {}
        actor = obs.Actor.user(actor_id)
        with obs.scope(
            actor=actor, workspace=workspace, organization=organization, request_id=request_id
        ):
            obs.propagation.inject(headers, secret=SECRET)
        assert all(v.isascii() and " " not in v for v in headers.values())
        with obs.propagation.extract(headers, trust_actor=True, secret=SECRET):
            current = obs.current_scope()
        assert (current.actor, current.workspace, current.organization, current.request_id) == (
            actor,
            workspace,
            organization,
            request_id,
        )

    @pytest.mark.swallows_internal_errors
    @given(
        headers=st.dictionaries(
            st.sampled_from(sorted(SIGNED_HEADERS)) | st.text(max_size=20),
            st.text(max_size=300) | st.lists(st.text(max_size=20), max_size=3),
        ),
        trust=st.booleans(),
        signed=st.booleans(),
    )
    def test_garbage_never_raises_and_never_lands(
        self, headers: dict[str, Any], trust: bool, signed: bool
    ) -> None:
        """Any header values open a scope whose ids are printable and bounded, or None."""
        with obs.propagation.extract(headers, trust_actor=trust, secret=SECRET if signed else None):
            current = obs.current_scope()
        for value in (current.workspace, current.organization, current.request_id):
            assert value is None or (value.isprintable() and 0 < len(value) <= 256)
        if signed:  # random text is never a valid signature
            assert current == obs.Scope()

    @pytest.mark.swallows_internal_errors
    def test_control_characters_drop_the_unit(self) -> None:
        """A newline in the organization drops both tenant ids; the rest still applies."""
        headers = {"obs-workspace": "ws_1", "obs-organization": "org\n1", "obs-request-id": "r1"}
        with obs.propagation.extract(headers, trust_tenant=True):
            current = obs.current_scope()
        assert (current.workspace, current.organization, current.request_id) == (None, None, "r1")
        assert obs.stats()["internal_errors"] == 1

    @pytest.mark.swallows_internal_errors
    def test_repeated_header_is_rejected(self) -> None:
        """Two different values for one field are suspicious: the field is dropped."""
        headers = {"obs-workspace": ["ws_1", "ws_2"], "obs-request-id": "r1"}
        with obs.propagation.extract(headers, trust_tenant=True):
            current = obs.current_scope()
        assert (current.workspace, current.request_id) == (None, "r1")

    def test_header_names_match_ignoring_case(self) -> None:
        """A plain dict with Title-Case names (as some servers hand them over) still works."""
        headers = {"Obs-Workspace": "ws_1", "OBS-ORGANIZATION": "org_1"}
        with obs.propagation.extract(headers, trust_tenant=True):
            current = obs.current_scope()
        assert (current.workspace, current.organization) == ("ws_1", "org_1")

    @pytest.mark.swallows_internal_errors
    def test_overlong_id_is_not_sent(self) -> None:
        """An id over 256 characters is left out (counted); the others still go."""
        headers: dict[str, str] = {}
        with obs.scope(actor=obs.Actor.user("u" * 257), workspace="ws_1"):
            obs.propagation.inject(headers)
        assert set(headers) == {"obs-workspace"}
        assert obs.stats()["internal_errors"] == 1

    def test_actors_without_ids_are_not_sent(self) -> None:
        """System and anonymous actors have no id, and their labels are names: nothing goes."""
        for actor in (obs.Actor.system("cron"), obs.Actor.anonymous("ph_1")):
            headers: dict[str, str] = {}
            with obs.scope(actor=actor, request_id="r1"):
                obs.propagation.inject(headers)
            assert headers == {"obs-request-id": "r1"}

    def test_stale_fields_are_replaced(self) -> None:
        """Injecting into a reused dict removes the fields the new scope does not have."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers, secret=SECRET)
        with obs.scope(workspace="ws_2"):
            obs.propagation.inject(headers)
        assert headers == {"obs-workspace": "ws_2"}


class TestNotGlobal:
    """The propagator rides beside traceparent only where the app calls it."""

    def test_global_propagator_sends_no_scope_ids(self) -> None:
        """OpenTelemetry's global inject (what instrumentations call) writes no obs- field."""
        headers: dict[str, str] = {}
        with ada_scope():
            propagate.inject(headers)
        assert not any(name.startswith("obs-") for name in headers)
        assert not any(f.startswith("obs-") for f in propagate.get_global_textmap().fields)


class TestTaskQueueMessage:
    """A message dict carries the ids through JSON, as a broker would."""

    def test_message_headers_round_trip_through_json(self) -> None:
        """A worker re-opens the producer's scope from the message headers."""
        import json

        message: dict[str, Any] = {"task": "resize", "args": ["f_1"], "headers": {}}
        with ada_scope():
            obs.propagation.inject(message["headers"], secret=SECRET)
        delivered = json.loads(json.dumps(message))
        with capture() as captured:
            with obs.propagation.extract(delivered["headers"], trust_actor=True, secret=SECRET):
                download(delivered["args"][0])
        assert who(captured.audits[0])["actor_id"] == "u_1"
        assert captured.audits[0]["workspace_id"] == "ws_1"

    async def test_extract_works_with_async_with(self) -> None:
        """``async with extract(...)`` scopes an asyncio consumer the same way."""
        headers: dict[str, str] = {}
        with ada_scope():
            obs.propagation.inject(headers)
        async with obs.propagation.extract(headers, trust_actor=True, trust_tenant=True):
            actor = obs.current_scope().actor
        assert actor == obs.Actor.user("u_1")

    def test_missing_headers_open_an_empty_scope(self) -> None:
        """A message without headers (None) is not an error."""
        with obs.scope(workspace="ws_own"), obs.propagation.extract(None):
            assert obs.current_scope().workspace == "ws_own"


class TestConfiguration:
    """Wrong arguments are configuration mistakes and raise at once."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"secret": ""}, "secret"),
            ({"secret": 42}, "secret"),
            ({"secret": []}, "empty list"),
            ({"max_age": 0}, "max_age"),
            ({"max_age": True}, "max_age"),
            ({"trust_actor": "yes"}, "trust_actor"),
            ({"trust_tenant": "yes"}, "trust_tenant"),
            ({"trust_tenant": 1}, "trust_tenant"),
        ],
    )
    def test_bad_extract_arguments(self, kwargs: dict[str, Any], message: str) -> None:
        """extract() names the argument to fix."""
        with pytest.raises(obs.ConfigurationError, match=message):
            obs.propagation.extract({}, **kwargs)

    def test_bad_carriers(self) -> None:
        """inject needs a mutable mapping; extract needs something with get()."""
        with pytest.raises(obs.ConfigurationError, match="dict of headers"):
            obs.propagation.inject([])  # type: ignore[arg-type]
        with pytest.raises(obs.ConfigurationError, match="headers object"):
            obs.propagation.extract(b"obs-workspace: ws_1")

    def test_inject_takes_one_secret(self) -> None:
        """Signing uses one secret; lists are for extract's rotation only."""
        with pytest.raises(obs.ConfigurationError, match="secret"):
            obs.propagation.inject({}, secret=["a", "b"])  # type: ignore[arg-type]
