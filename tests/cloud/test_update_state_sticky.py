"""A late telemetry sample never overrides the state an update event set with its reason."""

from __future__ import annotations

import pytest

from cloud.store.telemetry import telemetry_update_state
from protos.lifecycle import ENDED_STATES, UpdateState


@pytest.mark.parametrize("stored", sorted({*ENDED_STATES, UpdateState.HELD}))
def test_event_states_survive_a_late_sample(stored: str) -> None:
    assert telemetry_update_state(stored, UpdateState.SHADOWING) == stored


def test_a_sample_moves_a_running_update_along() -> None:
    assert telemetry_update_state(UpdateState.DOWNLOADING, UpdateState.STAGING) == "STAGING"
    assert telemetry_update_state(UpdateState.DOWNLOADING, "") == "DOWNLOADING"
