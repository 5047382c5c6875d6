"""QoS shares bind only under contention; shedding order BATCH → INTERACTIVE → SAFETY."""

from __future__ import annotations

import pytest

from cloud.router.admission import Admission, AdmissionConfig
from cloud.router.errors import RouterConfigError
from cloud.router.task import Qos


def _fill(adm: Admission, qos: Qos, limit: float, now: float) -> int:
    n = 0
    while adm.allows(qos, limit, now):
        adm.acquire(qos)
        n += 1
    return n


def test_a_lone_class_may_borrow_the_whole_limit() -> None:
    adm = Admission()
    adm.note_demand(Qos.BATCH, 0.0)
    assert _fill(adm, Qos.BATCH, 10, 0.0) == 10


def test_shares_bind_when_other_classes_have_demand() -> None:
    adm = Admission()
    for q in Qos:
        adm.note_demand(q, 0.0)
    # SAFETY 3 and INTERACTIVE 5 of 10 slots are held back for their classes.
    assert _fill(adm, Qos.BATCH, 10, 0.0) == 2
    assert _fill(adm, Qos.INTERACTIVE, 10, 0.0) == 5
    assert _fill(adm, Qos.SAFETY, 10, 0.0) == 3
    assert not adm.allows(Qos.SAFETY, 10, 0.0)


def test_stale_demand_stops_reserving_capacity() -> None:
    adm = Admission(AdmissionConfig(demand_window_s=1.0))
    adm.note_demand(Qos.SAFETY, 0.0)
    adm.note_demand(Qos.BATCH, 5.0)
    assert _fill(adm, Qos.BATCH, 10, 5.0) == 10


def test_shedding_order_is_batch_then_interactive_then_safety() -> None:
    adm = Admission()
    for q in Qos:
        adm.note_demand(q, 0.0)
    for _ in range(2):
        adm.acquire(Qos.BATCH)
    for _ in range(5):
        adm.acquire(Qos.INTERACTIVE)
    # 7 of 10 in use: BATCH and INTERACTIVE are out of their shares, SAFETY still fits.
    assert not adm.allows(Qos.BATCH, 10, 0.0)
    assert not adm.allows(Qos.INTERACTIVE, 10, 0.0)
    assert adm.allows(Qos.SAFETY, 10, 0.0)


def test_shares_must_be_probabilities_summing_to_at_most_one() -> None:
    with pytest.raises(RouterConfigError, match="sum"):
        Admission(AdmissionConfig({Qos.SAFETY: 0.6, Qos.INTERACTIVE: 0.6, Qos.BATCH: 0.0}))
    with pytest.raises(RouterConfigError, match="BATCH"):
        Admission(AdmissionConfig({Qos.SAFETY: 0.3, Qos.INTERACTIVE: 0.5}))
