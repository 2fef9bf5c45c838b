"""``--mutants`` (the whole mutation matrix) is registered in tests/conftest.py: tests/load uses it too."""
