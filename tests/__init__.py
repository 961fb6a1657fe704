"""Test suite (a package, so that ``tests.postgres_server`` is importable from conftest)."""
