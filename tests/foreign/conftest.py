"""The mutation matrix's switch, ``--mutants``, is registered in tests/conftest.py (tests/load uses it too)."""
