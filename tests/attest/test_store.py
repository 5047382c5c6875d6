"""The attestations table on SQLite and on a real PostgreSQL (alembic branch `attestations`)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.store import Store
from cloud.store.attestations import AttestationRecord, AttestationStore

_names = itertools.count()
T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def attestations(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AttestationStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'plane.db'}"
    else:
        url = str(request.getfixturevalue("postgres").create_database(f"att_{next(_names)}"))
    store = Store.open(url)
    yield AttestationStore(store.engine)
    store.close()


def _rec(policy: str, verdict: str, issued_h: float, expires_h: float) -> AttestationRecord:
    return AttestationRecord(
        policy_sha256=policy,
        root_digest="r" * 64,
        bundle_name="pendulum" if policy != "c" * 64 else "cartpole",
        bundle_version="1.0.0",
        bundle_sequence=1,
        verdict=verdict,
        key_id="k" * 64,
        issued_at=T0 + dt.timedelta(hours=issued_h),
        expires_at=T0 + dt.timedelta(hours=expires_h),
        envelope=f"{policy}{verdict}{issued_h}".encode(),
    )


def test_serves_newest_valid_attested_over_later_inconclusive(attestations) -> None:
    a = "a" * 64
    attestations.put(_rec(a, "attested", 0, 100))
    attestations.put(_rec(a, "attested", 1, 100))
    attestations.put(_rec(a, "underpowered", 2, 100))
    got = attestations.for_policy(a, now=T0 + dt.timedelta(hours=3))
    assert got is not None and got.verdict == "attested"
    assert got.issued_at == T0 + dt.timedelta(hours=1)
    assert got.issued_at.tzinfo is not None


def test_expired_attested_falls_back_to_newest_row(attestations) -> None:
    b = "b" * 64
    attestations.put(_rec(b, "attested", 0, 1))
    attestations.put(_rec(b, "not_attested", 2, 100))
    got = attestations.for_policy(b, now=T0 + dt.timedelta(hours=5))
    assert got is not None and got.verdict == "not_attested"
    assert attestations.for_policy("0" * 64) is None


def test_put_is_idempotent_and_list_filters_and_pages(attestations) -> None:
    rec = _rec("c" * 64, "attested", 0, 10)
    attestations.put(rec)
    attestations.put(rec)
    for i in range(3):
        attestations.put(_rec("d" * 64, "attested", i, 10))
    assert [r.bundle_name for r in attestations.list("cartpole")] == ["cartpole"]
    everything = attestations.list(limit=10)
    assert len(everything) == 4
    stamps = [r.issued_at for r in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert attestations.list(limit=2, offset=2) == everything[2:4]
    assert attestations.list(limit=2)[0].envelope == everything[0].envelope
