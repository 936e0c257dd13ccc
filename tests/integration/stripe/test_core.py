"""The Stripe webhook core without I/O: bytes, a header and a clock in, a decision out.

No database, no session, no configure(): the core decides alone, so each decision is a
plain function call, and the clock is an argument (no sleeping, no patched time).
"""

from __future__ import annotations

from typing import Any

from obs_sdk.integrations._stripe_core import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_TOLERANCE,
    Delivery,
    Verifier,
    WebhookResult,
    decide,
)
from tests.support.stripe_signing import TEST_SECRET, event_payload, sign

SIGNED_AT = 1_790_000_000
VERIFIER = Verifier((TEST_SECRET,), DEFAULT_TOLERANCE, DEFAULT_MAX_BODY_BYTES)


def paid(event_id: str = "evt_1") -> bytes:
    return event_payload(event_id, "invoice.paid", {"id": "in_1", "object": "invoice"})


def on_paid(event: Any, session: Any) -> None: ...


def on_every(event: Any, session: Any) -> None: ...


REGISTERED = (("invoice.paid", on_paid), ("customer.updated", on_paid), ("*", on_every))


class TestDecide:
    def test_a_verified_delivery_with_handlers_needs_the_database(self) -> None:
        """A good delivery comes back as a Delivery: its key and handlers, in order."""
        body = paid()
        decision = decide(VERIFIER, REGISTERED, body, sign(body, TEST_SECRET, SIGNED_AT), SIGNED_AT)

        assert isinstance(decision, Delivery)
        assert (decision.key, decision.event.id) == ("stripe:evt_1", "evt_1")
        assert decision.handlers == (on_paid, on_every)

    def test_an_unhandled_type_is_answered_without_the_database(self) -> None:
        """No handler for the type: 200 unhandled, decided before any transaction."""
        body = paid()
        decision = decide(
            VERIFIER,
            (("charge.failed", on_paid),),
            body,
            sign(body, TEST_SECRET, SIGNED_AT),
            SIGNED_AT,
        )

        assert decision == WebhookResult(
            200, {"status": "unhandled", "event_id": "evt_1", "type": "invoice.paid"}
        )

    def test_the_clock_is_an_input_both_ways(self) -> None:
        """The signed time is checked against the given now: tolerance past and future."""
        body = paid()
        header = sign(body, TEST_SECRET, SIGNED_AT)

        def reason(now: int) -> str | None:
            decision = decide(VERIFIER, REGISTERED, body, header, now)
            return decision.body["reason"] if isinstance(decision, WebhookResult) else None

        assert reason(SIGNED_AT + DEFAULT_TOLERANCE) is None
        assert reason(SIGNED_AT - DEFAULT_TOLERANCE) is None
        assert reason(SIGNED_AT + DEFAULT_TOLERANCE + 1) == "timestamp_outside_tolerance"
        assert reason(SIGNED_AT - DEFAULT_TOLERANCE - 1) == "timestamp_outside_tolerance"

    def test_refusals_cost_no_handler_and_no_database(self) -> None:
        """A wrong secret, a missing header and an oversized body are answered here."""
        body = paid()
        small = Verifier((TEST_SECRET,), DEFAULT_TOLERANCE, len(body) - 1)

        wrong = decide(VERIFIER, REGISTERED, body, sign(body, "whsec_other", SIGNED_AT), SIGNED_AT)
        missing = decide(VERIFIER, REGISTERED, body, None, SIGNED_AT)
        too_big = decide(small, REGISTERED, body, sign(body, TEST_SECRET, SIGNED_AT), SIGNED_AT)

        assert isinstance(wrong, WebhookResult) and isinstance(missing, WebhookResult)
        assert isinstance(too_big, WebhookResult)
        assert (wrong.status, wrong.body["reason"]) == (400, "invalid_signature")
        assert (missing.status, missing.body["reason"]) == (400, "missing_signature_header")
        assert (too_big.status, too_big.body["reason"]) == (413, "payload_too_large")


class TestDeliveryAnswers:
    def test_first_is_processed_and_a_repeat_is_a_duplicate(self) -> None:
        """once()'s flag picks the answer; processed counts the handlers that ran."""
        body = paid()
        delivery = decide(VERIFIER, REGISTERED, body, sign(body, TEST_SECRET, SIGNED_AT), SIGNED_AT)
        assert isinstance(delivery, Delivery)

        assert delivery.answer(True) == WebhookResult(
            200, {"status": "processed", "event_id": "evt_1", "type": "invoice.paid", "handlers": 2}
        )
        assert delivery.answer(False) == WebhookResult(
            200, {"status": "duplicate", "event_id": "evt_1", "type": "invoice.paid"}
        )

    def test_a_failure_answers_500_with_the_class_only(self) -> None:
        """A handler's error is answered 500 with its class, never its message."""
        body = paid()
        delivery = decide(VERIFIER, REGISTERED, body, sign(body, TEST_SECRET, SIGNED_AT), SIGNED_AT)
        assert isinstance(delivery, Delivery)

        failed = delivery.failed(ValueError("card 4242 4242 4242 4242"))

        assert failed == WebhookResult(
            500,
            {
                "status": "failed",
                "event_id": "evt_1",
                "type": "invoice.paid",
                "error": "ValueError",
            },
        )
