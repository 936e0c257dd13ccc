"""Delivery: the router, a bounded queue and worker per sink, rendering, redaction.

Private: apps use the names that obs_sdk exports (docs/architecture.md).
"""
