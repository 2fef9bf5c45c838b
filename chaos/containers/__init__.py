"""Containers for the lab: PostgreSQL, the fault proxy and the broker under test on a Docker engine."""
