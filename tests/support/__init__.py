"""Test support that drives the real libraries: a loopback PostHog, Stripe signing."""
