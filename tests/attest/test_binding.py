"""Binding: an attestation is refused, with a specific reason, unless it is signed by a
trusted key, typed right, for exactly this bundle, attested and in date.

The same matrix runs against the cloud verifier (securesystemslib) and the robot's
(`fleet.attestation`, plain `cryptography`), so the two implementations cross-check.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud.attest import statement as st
from fleet import attestation as fa

POLICY = hashlib.sha256(b"policy bytes").hexdigest()
ROOT = hashlib.sha256(b"oms root").hexdigest()
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _make(key: st.AttestationKey, **overrides) -> bytes:
    fields = {
        "policy_sha256": POLICY,
        "root_digest": ROOT,
        "bundle_name": "pendulum",
        "predicate": {"verdict": "attested", "tasks": []},
        "issued_at": NOW - timedelta(hours=1),
        "expires_at": NOW + timedelta(days=30),
    }
    fields.update(overrides)
    payload_type = fields.pop("payload_type", st.PAYLOAD_TYPE)
    return st.envelope_bytes(st.sign_statement(st.build_statement(**fields), key, payload_type))


def _cloud(raw: bytes, keys: dict, policy: str = POLICY, root: str = ROOT) -> str:
    try:
        st.verify_envelope(raw, keys, policy_sha256=policy, root_digest=root, now=NOW)
    except st.StatementError as exc:
        return exc.reason
    return "ok"


def _robot(raw: bytes, keys: dict, policy: str = POLICY, root: str = ROOT) -> str:
    try:
        fa.verify_attestation(raw, keys, policy_sha256=policy, root_digest=root, now=NOW)
    except fa.AttestationRefused as exc:
        return exc.reason
    return "ok"


VERIFIERS = pytest.mark.parametrize("verify", [_cloud, _robot], ids=["cloud", "robot"])
Verify = Callable[..., str]


@pytest.fixture(scope="module")
def key() -> st.AttestationKey:
    return st.AttestationKey(ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def trusted(key: st.AttestationKey) -> dict:
    return {key.key_id: key.public_key}


def _edit_payload(raw: bytes, edit: Callable[[dict], None]) -> bytes:
    env = json.loads(raw)
    statement = json.loads(base64.b64decode(env["payload"]))
    edit(statement)
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(env).encode()


@VERIFIERS
def test_valid_attestation_for_this_bundle_is_accepted(verify: Verify, key, trusted) -> None:
    assert verify(_make(key), trusted) == "ok"


@VERIFIERS
def test_altered_predicate_is_refused_as_bad_signature(verify: Verify, key, trusted) -> None:
    def flip(s: dict) -> None:
        s["predicate"]["verdict"] = "attested"
        s["predicate"]["tasks"] = [{"p_holm": 0.0}]

    assert verify(_edit_payload(_make(key), flip), trusted) == "bad_signature"


@VERIFIERS
def test_altered_subject_is_refused_as_bad_signature(verify: Verify, key, trusted) -> None:
    other = hashlib.sha256(b"other policy").hexdigest()

    def move(s: dict) -> None:
        s["subject"][0]["digest"]["sha256"] = other

    # Moved onto another model: the signature no longer covers it.
    assert verify(_edit_payload(_make(key), move), trusted, policy=other) == "bad_signature"


@VERIFIERS
def test_wrong_key_is_refused_as_untrusted(verify: Verify, trusted) -> None:
    stranger = st.AttestationKey(ed25519.Ed25519PrivateKey.generate())
    assert verify(_make(stranger), trusted) == "untrusted_key"


@VERIFIERS
def test_signature_under_trusted_keyid_by_another_key_is_bad_signature(
    verify: Verify, key, trusted
) -> None:
    stranger = st.AttestationKey(ed25519.Ed25519PrivateKey.generate())
    env = json.loads(_make(stranger))
    env["signatures"][0]["keyid"] = key.key_id
    assert verify(json.dumps(env).encode(), trusted) == "bad_signature"


@VERIFIERS
def test_wrong_payload_type_is_refused(verify: Verify, key, trusted) -> None:
    # Correctly signed, but as another type: DSSE's own verify would accept it.
    raw = _make(key, payload_type="application/json")
    assert verify(raw, trusted) == "payload_type"


@VERIFIERS
def test_attestation_for_another_bundle_is_refused_as_subject_mismatch(
    verify: Verify, key, trusted
) -> None:
    raw = _make(key)
    assert verify(raw, trusted, policy=hashlib.sha256(b"x").hexdigest()) == "subject_mismatch"
    assert verify(raw, trusted, root=hashlib.sha256(b"y").hexdigest()) == "subject_mismatch"


@VERIFIERS
def test_expired_attestation_is_refused(verify: Verify, key, trusted) -> None:
    raw = _make(key, issued_at=NOW - timedelta(days=40), expires_at=NOW - timedelta(seconds=1))
    assert verify(raw, trusted) == "expired"


@VERIFIERS
def test_future_attestation_is_refused_as_not_yet_valid(verify: Verify, key, trusted) -> None:
    raw = _make(key, issued_at=NOW + timedelta(hours=2), expires_at=NOW + timedelta(days=2))
    assert verify(raw, trusted) == "not_yet_valid"


@VERIFIERS
@pytest.mark.parametrize("verdict", ["not_attested", "underpowered"])
def test_signed_negative_verdict_is_refused(verify: Verify, key, trusted, verdict: str) -> None:
    raw = _make(key, predicate={"verdict": verdict})
    assert verify(raw, trusted) == "verdict"


@VERIFIERS
def test_wrong_predicate_type_is_refused(verify: Verify, key, trusted) -> None:
    stmt = st.build_statement(
        policy_sha256=POLICY,
        root_digest=ROOT,
        bundle_name="pendulum",
        predicate={"verdict": "attested"},
        issued_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(days=1),
    )
    stmt["predicateType"] = "https://model_signing/signature/v1.0"
    raw = st.envelope_bytes(st.sign_statement(stmt, key))
    assert verify(raw, trusted) == "predicate_type"


@VERIFIERS
@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b'{"payloadType":"application/vnd.in-toto+json"}']
)
def test_garbage_is_refused_as_malformed(verify: Verify, trusted, raw: bytes) -> None:
    assert verify(raw, trusted) == "malformed"


def test_url_safe_base64_envelope_verifies_on_the_robot(key, trusted) -> None:
    env = json.loads(_make(key))
    payload = base64.b64decode(env["payload"])
    env["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    assert _robot(json.dumps(env).encode(), trusted) == "ok"


def test_robot_checks_keys_by_recomputed_id_not_mapping_label(key) -> None:
    # A trust store keyed by a wrong label still identifies the key by its material.
    assert _robot(_make(key), {"mislabelled": key.public_key}) == "ok"


def test_key_files_round_trip_and_are_private(tmp_path: Path) -> None:
    key = st.generate_key(tmp_path / "attest.key")
    assert (tmp_path / "attest.key").stat().st_mode & 0o077 == 0
    loaded = st.load_key(tmp_path / "attest.key")
    assert loaded.key_id == key.key_id
    pub = st.load_public_key((tmp_path / "attest.key.pub").read_bytes())
    assert st.key_id(pub) == key.key_id
    with pytest.raises(st.StatementError, match="refusing to overwrite"):
        st.generate_key(tmp_path / "attest.key")


def test_activation_policy_decisions(key, trusted) -> None:
    raw = _make(key)
    required = fa.AttestationPolicy(require_parity_attestation=True)

    def decide(policy: fa.AttestationPolicy, fetch: Callable[[str], bytes | None]) -> str:
        return fa.check_activation(
            policy,
            policy_sha256=POLICY,
            root_digest=ROOT,
            fetch=fetch,
            trusted_keys=trusted,
            now=NOW,
        ).reason

    assert decide(fa.AttestationPolicy(), lambda _: None) == "not_required"
    assert decide(required, lambda _: raw) == "attested"
    assert decide(required, lambda _: None) == "missing"

    def broken(_: str) -> bytes:
        raise ConnectionError("control plane unreachable")

    assert decide(required, broken) == "fetch_failed"
    assert decide(required, lambda _: _make(key, predicate={"verdict": "underpowered"})) == (
        "verdict"
    )


@VERIFIERS
def test_extra_untrusted_signature_beside_a_trusted_one_is_accepted(
    verify: Verify, key, trusted
) -> None:
    stranger = st.AttestationKey(ed25519.Ed25519PrivateKey.generate())
    good = json.loads(_make(key))
    other = json.loads(_make(stranger))
    assert other["payload"] == good["payload"]  # same canonical statement, two signers
    good["signatures"] = other["signatures"] + good["signatures"]
    assert verify(json.dumps(good).encode(), trusted) == "ok"
