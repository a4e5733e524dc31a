"""Keycard's benchmark: ``make bench`` or ``.venv/bin/python -m bench`` (see docs/benchmarks.md)."""
