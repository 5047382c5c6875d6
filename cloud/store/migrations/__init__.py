"""Alembic migrations of the control-plane store (run by `Store.open`)."""
