"""Vendor and framework adapters, installed as ``obs_sdk.integrations``.

Each module imports its library at the top and fails with a ``MissingDependencyError``
naming the extra to install. The core never imports anything from here.
"""
