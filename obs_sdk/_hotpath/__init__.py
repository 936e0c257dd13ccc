"""The hot path: decoration, templates, generated wrappers, the record, the intake.

Private: apps use the names that obs_sdk exports (docs/architecture.md).
"""
