from __future__ import annotations

import numpy as np
import pytest

from runtime.envelope import Reason, SafetyEnvelope
from tests.runtime.conftest import manifest


def _env(**control: object) -> SafetyEnvelope:
    m = manifest(control=control)
    return SafetyEnvelope(m.io, m.control)


def _f(*v: float) -> np.ndarray:
    return np.asarray(v, np.float32)


@pytest.mark.parametrize(
    ("obs", "reason"),
    [
        ([0.0, 1.0, 0.0], Reason.OBS_TYPE),
        (np.zeros(4, np.float32), Reason.OBS_SHAPE),
        (np.zeros((1, 3), np.float32), Reason.OBS_SHAPE),
        (np.zeros(3, np.float64), Reason.OBS_DTYPE),
        (np.zeros(3, ">f4"), Reason.OBS_DTYPE),  # float32, but not in native byte order
        (_f(np.nan, 0, 0), Reason.OBS_NONFINITE),
        (_f(0, np.inf, 0), Reason.OBS_NONFINITE),
        (_f(0, 0, 9.0), Reason.OBS_OUT_OF_BOUNDS),  # |θ̇| <= 8 plus 5 % of 16 = 8.8
    ],
)
def test_observation_checks_reject_and_count(obs: object, reason: Reason) -> None:
    env = _env()
    assert env.check_observation(obs) is reason
    assert env.counts == {reason.value: 1}


def test_observation_inside_bounds_plus_margin_passes() -> None:
    env = _env()
    assert env.check_observation(_f(1.0, -1.0, 8.7)) is None
    assert not env.counts


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_refused(bad: float) -> None:
    env = _env()
    out = np.zeros(1, np.float32)
    assert env.filter_action(_f(bad), _f(0.5), out) is None
    assert env.counts == {"action_nonfinite": 1}


def test_action_inside_bounds_passes_untouched() -> None:
    env = _env()
    raw = _f(1.5)
    assert env.filter_action(raw, _f(0.0), np.zeros(1, np.float32)) is raw
    assert not env.counts


def test_action_outside_bounds_is_clamped_and_counted() -> None:
    env = _env()
    out = np.zeros(1, np.float32)
    got = env.filter_action(_f(7.0), _f(0.0), out)
    assert got is out and out[0] == 2.0
    assert env.counts == {"action_clamped": 1}


def test_action_change_per_tick_is_limited() -> None:
    env = _env(max_action_delta=0.25)
    out = np.zeros(1, np.float32)
    got = env.filter_action(_f(1.0), _f(0.5), out)
    assert got is not None and got[0] == pytest.approx(0.75)
    assert env.counts == {"action_rate_limited": 1}
    assert env.filter_action(_f(0.6), _f(0.5), out) is not None
    assert env.counts == {"action_rate_limited": 1}


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ({"fallback": "hold"}, 0.7),
        ({"fallback": "zero"}, 0.0),
        ({"fallback": "safe", "safe_action": [-0.5]}, -0.5),
        ({"fallback": "safe", "safe_action": [9.0]}, 2.0),  # a safe vector is clamped too
    ],
)
def test_fallback_follows_the_manifest(control: dict[str, object], expected: float) -> None:
    env = _env(**control)
    assert env.fallback(_f(0.7))[0] == pytest.approx(expected)


def test_hold_never_holds_a_non_finite_action() -> None:
    assert _env(fallback="hold").fallback(_f(np.nan))[0] == 0.0
