"""The scope: who is acting and for whom, carried in OpenTelemetry's context.

Private: apps use the names that obs_sdk exports (docs/architecture.md).
"""
