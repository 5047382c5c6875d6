"""The single source of the EdgeFlux version (read by pyproject and the runtime's compat checks)."""

__version__ = "0.1.0"
