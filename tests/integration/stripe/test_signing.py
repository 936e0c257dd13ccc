"""Stripe signing helpers against the real stripe.Webhook verification (no mocks)."""

from __future__ import annotations

import json
import time

import pytest
import stripe

from tests.support.stripe_signing import (
    API_VERSION,
    SIGNATURE_HEADER,
    TEST_SECRET,
    delivery,
    event_payload,
    sign,
    sign_rolled,
    sign_stale,
    tampered,
)

CUSTOMER = {
    "id": "cus_123",
    "object": "customer",
    "email": "a@example.com",
    "metadata": {},
}


def payload() -> bytes:
    return event_payload("evt_1", "customer.updated", CUSTOMER, created=1_790_000_000)


class TestValidSignature:
    def test_construct_event_accepts_the_signature(self):
        """A fresh signature verifies into a stripe.Event with id, type, object."""
        body = payload()

        event = stripe.Webhook.construct_event(body, sign(body, TEST_SECRET), TEST_SECRET)

        assert isinstance(event, stripe.Event)
        assert (event.id, event.type, event.api_version, event.livemode) == (
            "evt_1",
            "customer.updated",
            API_VERSION,
            False,
        )
        assert event["data"]["object"]["id"] == "cus_123"
        assert event.to_dict()["data"]["object"] == CUSTOMER

    def test_header_equals_stripes_own(self):
        """sign() produces the header stripe's generate_signature_header produces."""
        body = payload()

        assert sign(body, TEST_SECRET, 1_790_000_000) == (
            stripe.WebhookSignature.generate_signature_header(
                body.decode(), TEST_SECRET, 1_790_000_000
            )
        )

    def test_rolled_secrets_verify_under_each(self):
        """A header with one v1 per rolled secret verifies under either secret."""
        body = payload()
        header = sign_rolled(body, ["whsec_new", "whsec_old"])

        for secret in ("whsec_new", "whsec_old"):
            assert stripe.Webhook.construct_event(body, header, secret).id == "evt_1"

    def test_delivery_carries_a_verifiable_header(self):
        """delivery() returns the body and a Stripe-Signature header that verifies."""
        sent = delivery("evt_2", "invoice.paid", {"id": "in_1", "object": "invoice"})

        event = stripe.Webhook.construct_event(
            sent.body, sent.headers[SIGNATURE_HEADER], TEST_SECRET
        )

        assert (event.id, event.type, event["data"]["object"]["id"]) == (
            "evt_2",
            "invoice.paid",
            "in_1",
        )


class TestRejectedSignature:
    def test_tampered_body_raises(self):
        """A body changed after signing raises SignatureVerificationError."""
        body = payload()
        header = sign(body, TEST_SECRET)

        with pytest.raises(stripe.SignatureVerificationError, match="No signatures found matching"):
            stripe.Webhook.construct_event(tampered(body), header, TEST_SECRET)

    def test_reserialised_body_raises(self):
        """Re-serialised JSON fails: a handler must verify the raw bytes."""
        body = payload()
        header = sign(body, TEST_SECRET)

        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(json.dumps(json.loads(body)), header, TEST_SECRET)

    def test_stale_timestamp_raises(self):
        """A signature older than the 300 s tolerance raises the error."""
        body = payload()

        with pytest.raises(stripe.SignatureVerificationError, match="tolerance zone"):
            stripe.Webhook.construct_event(body, sign_stale(body, TEST_SECRET), TEST_SECRET)

    def test_wrong_secret_raises(self):
        """A signature made with another secret raises SignatureVerificationError."""
        body = payload()

        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, sign(body, "whsec_other"), TEST_SECRET)


class TestLibraryContract:
    """What stripe does with signed but malformed payloads: WebhookHandler's job."""

    def test_signed_invalid_json_raises_value_error(self):
        """A signed body that is not JSON raises JSONDecodeError (a ValueError)."""
        header = sign(b"not json", TEST_SECRET)

        with pytest.raises(json.JSONDecodeError):
            stripe.Webhook.construct_event(b"not json", header, TEST_SECRET)

    def test_signed_json_array_raises_attribute_error(self):
        """Valid signature over a JSON array raises AttributeError, not ValueError."""
        header = sign(b"[1]", TEST_SECRET)

        with pytest.raises(AttributeError):
            stripe.Webhook.construct_event(b"[1]", header, TEST_SECRET)

    def test_signed_object_without_id_is_accepted(self):
        """construct_event accepts {} with no id or type: the handler must check."""
        header = sign(b"{}", TEST_SECRET)

        event = stripe.Webhook.construct_event(b"{}", header, TEST_SECRET)

        assert ("id" in event, "type" in event) == (False, False)

    def test_event_is_not_a_dict(self):
        """A stripe.Event has [] and attributes but no dict.get: use .to_dict()."""
        body = payload()
        event = stripe.Webhook.construct_event(body, sign(body, TEST_SECRET), TEST_SECRET)

        with pytest.raises(AttributeError, match="not a dict"):
            event.get("id")
        assert event.to_dict()["id"] == "evt_1"

    def test_future_timestamp_is_accepted(self):
        """Only old timestamps are rejected: one an hour ahead still verifies.

        So WebhookHandler checks the signed time against its tolerance both ways itself.
        """
        body = payload()
        header = sign(body, TEST_SECRET, int(time.time()) + 3600)

        assert stripe.Webhook.construct_event(body, header, TEST_SECRET).id == "evt_1"
