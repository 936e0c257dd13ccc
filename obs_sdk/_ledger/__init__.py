"""The ledger: SQL tables, records held to the commit, changes, once(), metering.

Private: apps use the names that obs_sdk exports (docs/architecture.md).
"""
