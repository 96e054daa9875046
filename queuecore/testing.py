"""Fixtures for testing plugins (a pytest plugin, registered through ``pytest11``)."""
