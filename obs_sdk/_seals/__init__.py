"""Seals: signed Merkle roots over committed audit rows; verification, proofs, erasure.

Private: apps use the names that obs_sdk exports (docs/architecture.md).
"""
