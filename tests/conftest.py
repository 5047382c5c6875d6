"""Shared fixtures. Real servers come from `tests/servers.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Postgres, run_postgres


def _cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and _nvidia_present()


def _nvidia_present() -> bool:
    import os

    return os.path.exists("/dev/nvidia0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL server for the whole session; make a database per test."""
    with run_postgres() as pg:
        yield pg
