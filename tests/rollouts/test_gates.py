"""The pure rollout gates: the parity attestation check and decision, approvals."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.attest import statement
from cloud.rollouts.engine import Rollout, RolloutSpec, SpecError, TransitionError
from cloud.rollouts.gates import (
    AttestationCheck,
    GateSpec,
    approval_of,
    approve,
    attestation_decision,
    check_attestation,
    gate_spec,
    hold_for_approval,
    record_attestation,
    waiting_for_approval,
)
from tests.rollouts.attestations import envelope

POLICY = hashlib.sha256(b"policy").hexdigest()
ROOT = hashlib.sha256(b"root").hexdigest()
BUNDLE = {"name": "pendulum", "version": "1.1.0", "sequence": 2}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> statement.AttestationKey:
    return statement.generate_key(Path(tmp_path_factory.mktemp("key")) / "attestation.pem")


def trusted(key: statement.AttestationKey) -> dict[str, object]:
    return {key.key_id: key.public_key}


def check(raw: bytes | None, keys: dict[str, object], now: float | None = None, **kw: str):
    args = {"policy_sha256": POLICY, "root_digest": ROOT, "bundle": "pendulum 1.1.0", **kw}
    return check_attestation(raw, keys, now=time.time() if now is None else now, **args)


# ---------------------------------------------------------------- attestation check
def test_a_valid_attestation_passes_and_says_until_when(key) -> None:
    got = check(envelope(key, policy_sha256=POLICY, root_digest=ROOT), trusted(key))
    assert got.ok and got.reason == "attested"
    assert got.expires_at is not None and got.expires_at > time.time() + 29 * 86400
    assert "valid until" in got.message and key.key_id[:16] in got.message


def test_no_attestation_and_no_policy_digest_are_missing(key) -> None:
    none = check(None, trusted(key))
    assert not none.ok and none.reason == "missing"
    assert "--allow-unattested" in none.message and "edgeflux attest run" in none.message
    nodigest = check(b"{}", trusted(key), policy_sha256="")
    assert nodigest.reason == "missing" and "no policy digest" in nodigest.message


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda k: envelope(k, policy_sha256=POLICY, root_digest=ROOT, verdict="not_attested"),
            "verdict",
        ),
        (lambda k: envelope(k, policy_sha256=ROOT, root_digest=ROOT), "subject_mismatch"),
        (lambda k: envelope(k, policy_sha256=POLICY, root_digest=POLICY), "subject_mismatch"),
        (lambda k: b"{not json", "malformed"),
    ],
)
def test_a_bad_attestation_is_refused_with_the_verifiers_reason(key, make, reason) -> None:
    got = check(make(key), trusted(key))
    assert not got.ok and got.reason == reason, got
    assert got.message.startswith("pendulum 1.1.0: ")


def test_an_attestation_expired_at_now_is_refused(key) -> None:
    raw = envelope(key, policy_sha256=POLICY, root_digest=ROOT, expires_in_s=60)
    assert check(raw, trusted(key)).ok
    later = check(raw, trusted(key), now=time.time() + 61)
    assert later.reason == "expired" and "expired at" in later.message


def test_an_untrusted_key_or_an_altered_payload_is_refused(key, tmp_path) -> None:
    raw = envelope(key, policy_sha256=POLICY, root_digest=ROOT)
    other = statement.generate_key(tmp_path / "other.pem")
    assert check(raw, trusted(other)).reason == "untrusted_key"
    assert check(raw, {}).reason == "untrusted_key"
    env = json.loads(raw)
    body = json.loads(base64.b64decode(env["payload"]))
    body["predicate"]["expires_at"] = "2999-01-01T00:00:00Z"
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    assert check(json.dumps(env).encode(), trusted(key)).reason == "bad_signature"


def test_a_missing_root_digest_checks_the_policy_subject_only(key) -> None:
    raw = envelope(key, policy_sha256=POLICY, root_digest=ROOT)
    assert check(raw, trusted(key), root_digest="").ok


# ---------------------------------------------------------------- decision
def test_the_decision_refuses_without_override_and_names_the_operator_with_it() -> None:
    bad = AttestationCheck("expired", "pendulum 1.1.0: the attestation expired at X")
    go, text = attestation_decision(bad, GateSpec())
    assert not go and text.startswith("parity attestation gate: expired: ")
    go, text = attestation_decision(bad, GateSpec(allow_unattested=True, override_by="op:bob"))
    assert go and "override by op:bob" in text and "expired" in text
    good = AttestationCheck("attested", "fine", 1.0)
    assert attestation_decision(good, GateSpec()) == (True, "fine")


# ---------------------------------------------------------------- gate spec
def test_gate_spec_round_trips_and_refuses_a_wave_the_plan_lacks() -> None:
    spec = GateSpec(allow_unattested=True, override_by="operator:a", approval_waves=(2, 0))
    assert GateSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == GateSpec(
        True, "operator:a", (0, 2)
    )
    assert GateSpec.from_dict({}) == GateSpec()
    GateSpec(approval_waves=(0, 2)).check(3)
    with pytest.raises(SpecError, match="wave 3 does not exist; this rollout has 3 wave"):
        GateSpec(approval_waves=(3,)).check(3)
    for bad in ("1", [True], [1.5], {"a": 1}):
        with pytest.raises(SpecError, match=r"gates\.approval_waves"):
            GateSpec.from_dict({"approval_waves": bad})


# ---------------------------------------------------------------- approvals
def make(approval_waves: tuple[int, ...] = (1,), n: int = 4) -> Rollout:
    spec = RolloutSpec(
        BUNDLE,
        tuple(f"r{i}" for i in range(n)),
        (0.25, 0.5, 1.0),
        gates=GateSpec(approval_waves=approval_waves).to_dict(),
    )
    r = Rollout.create("ro-1", spec, now=0.0, created_by="operator:alice")
    r.start(1.0)
    return r


def reload(r: Rollout) -> Rollout:
    """Through JSON, as the store keeps it across a plane restart."""
    spec, status = json.loads(json.dumps(r.spec.to_dict())), json.loads(json.dumps(r.to_status()))
    return Rollout.from_dicts(r.id, spec, status)


def run_wave(r: Rollout, now: float) -> None:
    w = r.next_dispatch()
    assert w is not None
    r.dispatched(w.index, now, {d: None for d in w.device_ids})
    for d in w.device_ids:
        r.observe(d, "COMMITTED", "", now)
    r.evaluate(now)


def test_a_wave_waits_for_its_approval_which_survives_a_reload() -> None:
    r = make((1,))
    assert not hold_for_approval(r, 0, 2.0)
    run_wave(r, 2.0)
    assert r.current == 1 and r.next_dispatch() is not None
    assert hold_for_approval(r, 1, 3.0) and hold_for_approval(r, 1, 4.0)
    waits = [h for h in r.history if "waits for approval" in h["reason"]]
    assert len(waits) == 1  # noted once, however many passes
    r = reload(r)
    assert waiting_for_approval(r, 1)
    assert approve(r, None, "operator:bob", 5.0) == 1
    r = reload(r)
    assert approval_of(r, 1) == {"by": "operator:bob", "at": 5.0}
    assert not hold_for_approval(r, 1, 6.0)
    assert r.history[-1]["reason"] == "wave 1 approved by operator:bob"


def test_an_approval_is_applied_once_and_only_to_a_wave_that_waits() -> None:
    r = make((1, 2))
    approve(r, 2, "operator:bob", 2.0)  # ahead of time is allowed
    with pytest.raises(TransitionError, match="already approved by operator:bob"):
        approve(r, 2, "operator:carol", 3.0)
    with pytest.raises(TransitionError, match="wave 0 of rollout ro-1 does not wait"):
        approve(r, 0, "operator:bob", 3.0)
    with pytest.raises(TransitionError, match="there is no wave 7"):
        approve(r, 7, "operator:bob", 3.0)
    assert approve(r, None, "operator:bob", 4.0) == 1
    with pytest.raises(TransitionError, match="no wave waiting for approval"):
        approve(r, None, "operator:bob", 5.0)
    assert approval_of(r, 2) == {"by": "operator:bob", "at": 2.0}


def test_a_dispatched_wave_or_a_finished_rollout_is_not_approved() -> None:
    r = make((0, 1))
    approve(r, 0, "operator:bob", 2.0)
    r.waves[1].state = "cancelled"
    with pytest.raises(TransitionError, match="wave 1 of rollout ro-1 is cancelled"):
        approve(r, 1, "operator:bob", 3.0)
    r.abort(4.0, "operator:bob", rollback=False)
    with pytest.raises(TransitionError, match="is aborted; nothing to approve"):
        approve(r, None, "operator:bob", 5.0)


def test_the_attestation_finding_is_kept_with_the_rollout() -> None:
    r = make(())
    record_attestation(r, 0, AttestationCheck("attested", "ok", 99.0), 2.0)
    got = reload(r).gates["attestation"]
    assert got == {"reason": "attested", "message": "ok", "expires_at": 99.0, "wave": 0, "at": 2.0}
    assert gate_spec(r) == GateSpec()


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.integers(0, 2)),
    st.lists(st.one_of(st.none(), st.integers(-1, 4)), max_size=8),
)
def test_property_each_wave_is_approved_at_most_once(required, attempts) -> None:
    r = make(tuple(sorted(required)))
    approved: list[int] = []
    for i, wave in enumerate(attempts):
        with contextlib.suppress(TransitionError):
            approved.append(approve(r, wave, f"operator:{i}", float(i)))
        r = reload(r)
    assert len(approved) == len(set(approved))
    assert set(approved) <= required
    for w in range(3):
        assert waiting_for_approval(r, w) == (w in required and w not in approved)
        assert hold_for_approval(r, w, 99.0) == waiting_for_approval(r, w)


def test_rollout_create_help_shows_every_gate() -> None:
    from click.testing import CliRunner

    from edgeflux.cli import root

    res = CliRunner().invoke(root, ["rollout", "create", "--help"])
    assert res.exit_code == 0, res.output
    for option in (
        "--abort-threshold",
        "--allow-unattested",
        "--approval-wave",
        "--max-failure",
        "--max-tries",
        "--retry-backoff",
        "--retry-max",
        "--soak",
        "--max-miss-rate-increase",
        "--max-interventions-increase",
        "--max-latency-p99-ms",
        "--max-latency-ratio",
        "--max-divergence",
        "--max-errors-increase",
        "--abort-min-robots",
        "--approval-url",
        "--approval-timeout",
        "--offline-policy",
    ):
        assert option in res.output, option
    res = CliRunner().invoke(root, ["rollout", "approve", "--help"])
    assert res.exit_code == 0 and "--wave" in res.output
