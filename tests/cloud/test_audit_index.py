"""The audit log's (action, target) index (migration ``audit_0001``) on SQLite and
PostgreSQL: made by the migration on a home that lacked it, used by the keyed audit
write's look-up, and the keyed write still writes once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from cloud.store import Store
from cloud.store._base import MIGRATIONS
from tests.servers import Postgres

INDEX = "ix_audit_action_target"
LOOKUP = "SELECT detail FROM audit WHERE action = 'rollout.abort_threshold' AND target = 'ro-1'"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'plane.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        yield pg.create_database(f"audit_{uuid.uuid4().hex[:10]}")


def _indexes(store: Store) -> dict[str, list[str]]:
    got = sa.inspect(store.engine).get_indexes("audit")
    return {str(i["name"]): list(i["column_names"]) for i in got}


def _plan(store: Store) -> str:
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {LOOKUP}").fetchall()
        else:  # a small table is scanned anyway: ask whether the index can serve it
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = conn.exec_driver_sql(f"EXPLAIN {LOOKUP}").fetchall()
    return "\n".join(" ".join(str(c) for c in r) for r in rows)


def test_the_migration_adds_the_index_and_the_keyed_lookup_uses_it(url: str) -> None:
    store = Store.open(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:  # an older home, without the index
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "audit@0001")
    store.engine.dispose()
    assert INDEX not in _indexes(store)
    assert INDEX not in _plan(store)
    store.close()

    store = Store.open(url)  # opening the home migrates it
    try:
        assert _indexes(store)[INDEX] == ["action", "target"]
        assert INDEX in _plan(store)
        for i in range(50):
            store.audit("op", "rollout.approve", f"ro-{i}", {"wave": 1})
        key = "ro-1:abort:k1"
        assert store.audit_once(key, "engine", "rollout.abort_threshold", "ro-1", {"f": 1})
        assert not store.audit_once(key, "engine", "rollout.abort_threshold", "ro-1", {"f": 1})
        assert store.audit_once("ro-2:abort:k1", "engine", "rollout.abort_threshold", "ro-2", {})
        got = [a for a in store.audit_log(limit=100) if a.action == "rollout.abort_threshold"]
        assert sorted(a.target for a in got) == ["ro-1", "ro-2"]
    finally:
        store.close()
