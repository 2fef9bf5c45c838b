"""The mutation matrix's switch: ``--mutants`` runs every mutant, not only the fast slice."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mutants", action="store_true", help="run the whole mutation matrix (tests/foreign)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mutants: the slow part of the mutation matrix (run with --mutants)")
