"""Cloud fixtures: a store on SQLite and on a real PostgreSQL (same tests run on both)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.store import Store

_db_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'plane.db'}"
    pg = request.getfixturevalue("postgres")
    return str(pg.create_database(f"cloud_{next(_db_names)}"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    yield s
    s.close()
