"""Push plans (what a confirmation shows) and local attestation verification."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.dsse import pae
from tests.tui.sim import ATTESTATION_KEY, make_attestation, write_attestation_key
from tui.push import plan_push, selector_devices
from tui.query import QueryError
from tui.rows import DeviceRow
from tui.verify import TrustedKeyError, load_trusted_keys, verify_envelope


def dev(i: int, version: str = "1.0.0", seq: int = 1, site: str = "lab") -> DeviceRow:
    return DeviceRow(
        id=f"d{i}",
        labels=(("site", site),),
        bundle_name="pend" if version else "",
        bundle_version=version,
        bundle_sequence=seq,
    )


def test_plan_counts_each_version_transition() -> None:
    devices = [dev(1), dev(2), dev(3, "1.1.0", 2), dev(4, "", 0), dev(5, "1.2.0", 3)]
    plan = plan_push("pend", "1.1.0", 2, devices, "5 marked")
    assert plan.count == 5
    assert dict(plan.transitions) == {
        "pend 1.0.0 → pend 1.1.0": 2,
        "(no bundle) → pend 1.1.0": 1,
        "pend 1.2.0 → pend 1.1.0": 1,
    }
    assert plan.already == 1
    assert plan.downgrades == 1
    text = "\n".join(plan.describe())
    assert "to 5 robots (5 marked)" in text
    assert "anti-rollback will refuse" in text


def test_more_than_one_robot_needs_the_count_or_name_typed() -> None:
    plan = plan_push("pend", "1.1.0", 2, [dev(1), dev(2), dev(3)], "x")
    assert not plan.confirmation_ok("")
    assert not plan.confirmation_ok("2")
    assert not plan.confirmation_ok("yes")
    assert plan.confirmation_ok("3")
    assert plan.confirmation_ok(" pend ")


def test_one_robot_needs_no_typing_and_none_can_never_be_confirmed() -> None:
    assert plan_push("pend", "1.1.0", 2, [dev(1)], "x").confirmation_ok("")
    assert not plan_push("pend", "1.1.0", 2, [], "x").confirmation_ok("0")


def test_selector_devices_match_all_labels() -> None:
    rows = [dev(1, site="lab"), dev(2, site="yard")]
    assert [r.id for r in selector_devices(rows, "site=lab")] == ["d1"]
    with pytest.raises(QueryError, match="empty selector"):
        selector_devices(rows, " , ")
    with pytest.raises(QueryError, match="'lab' is not label=value"):
        selector_devices(rows, "lab")


def _envelope_with(payload: bytes, key: Ed25519PrivateKey) -> bytes:
    ptype = "application/vnd.in-toto+json"
    sig = key.sign(pae(ptype, payload))
    return json.dumps(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": ptype,
            "signatures": [{"keyid": "k", "sig": base64.b64encode(sig).decode()}],
        }
    ).encode()


def test_trusted_key_verifies_and_statement_is_read(tmp_path: Path) -> None:
    keys = load_trusted_keys(write_attestation_key(tmp_path))
    att = make_attestation(ATTESTATION_KEY, "ab" * 32, "1.1.0")
    check = verify_envelope(att.envelope.dsse_json, keys)
    assert check.ok, check.detail
    assert check.statement is not None
    assert check.statement["predicate"]["verdict"] == "attested"


def test_tampered_payload_fails_and_is_not_parsed(tmp_path: Path) -> None:
    keys = load_trusted_keys(write_attestation_key(tmp_path))
    env = json.loads(make_attestation(ATTESTATION_KEY, "ab" * 32, "1.1.0").envelope.dsse_json)
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["verdict"] = "attested-by-me"
    env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    check = verify_envelope(json.dumps(env).encode(), keys)
    assert not check.ok
    assert check.statement is None
    assert "no signature verifies" in check.detail


def test_untrusted_signer_and_missing_keys_fail(tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate()
    env = _envelope_with(b'{"a": 1}', other)
    keys = load_trusted_keys(write_attestation_key(tmp_path))
    assert not verify_envelope(env, keys).ok
    none = verify_envelope(env, [])
    assert not none.ok and "NOT checked" in none.detail
    assert not verify_envelope(b"{not json", keys).ok


def test_keys_load_from_a_directory_of_pem_and_json(tmp_path: Path) -> None:
    write_attestation_key(tmp_path)
    raw = ATTESTATION_KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    (tmp_path / "k.json").write_text(
        json.dumps({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": raw.hex()}})
    )
    (tmp_path / "README.txt").write_text("ignored")
    keys = load_trusted_keys(tmp_path)
    assert len(keys) == 2
    raw_of = [
        k.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for k in keys
    ]
    assert raw_of == [raw, raw]  # the same key from both formats
    env = _envelope_with(b'{"a": 1}', ATTESTATION_KEY)
    assert verify_envelope(env, keys[1:]).ok  # the JSON-format key alone verifies


def test_wrong_key_types_are_refused_with_the_file_named(tmp_path: Path) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    bad = tmp_path / "p256.pem"
    bad.write_bytes(
        p256.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(TrustedKeyError, match=r"p256\.pem: attestation keys are Ed25519"):
        load_trusted_keys(bad)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(TrustedKeyError, match=r"junk\.pem: not a PEM public key"):
        load_trusted_keys(junk)
    with pytest.raises(TrustedKeyError, match="does not exist"):
        load_trusted_keys(tmp_path / "missing")


def test_envelopes_signed_by_the_plane_verify_with_its_public_key_file(tmp_path: Path) -> None:
    """Interop: the plane's signer (securesystemslib DSSE, trust-store key ids) against ours."""
    import datetime as dt

    from cloud.attest import statement

    key = statement.generate_key(tmp_path / "keys" / "attestation.key")
    now = dt.datetime.now(dt.UTC)
    st = statement.build_statement(
        policy_sha256="ab" * 32,
        root_digest="cd" * 32,
        bundle_name="pendulum",
        predicate={"verdict": "attested", "tasks": [{"task": "swingup", "p_holm": 0.01}]},
        issued_at=now,
        expires_at=now + dt.timedelta(days=30),
    )
    raw = statement.envelope_bytes(statement.sign_statement(st, key))
    (tmp_path / "keys" / "attestation.key").unlink()  # only the .pub is trusted material
    keys = load_trusted_keys(tmp_path / "keys")
    assert [k.keyid for k in keys] == [key.key_id]  # same id the plane signs with
    check = verify_envelope(raw, keys)
    assert check.ok, check.detail
    assert check.keyid == key.key_id
    assert check.statement is not None and check.statement["predicate"]["verdict"] == "attested"
