"""Alembic migrations for the call log (shipped in the package so a wheel carries them)."""
