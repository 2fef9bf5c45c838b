"""The ``fastport-lab`` application: its commands, each wiring the lab (:mod:`chaos`) to its reports.

This is the top layer: it may import :mod:`chaos` and :mod:`reports`; neither
imports it (the import contracts in pyproject.toml say so, and the test suite
checks them).
"""
