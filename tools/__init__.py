"""Maintenance commands of the repository (``python -m tools.NAME``), run by hand or checked by tests."""
