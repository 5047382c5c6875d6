"""The robot's desired-state verifier (cryptography) against envelopes signed the way the
control plane signs them (securesystemslib DSSE + CryptoSigner, Ed25519)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner

from fleet._effects import DESIRED_STATE_PAYLOAD_TYPE, verify_desired_state
from fleet.update import Reason, UpdateError

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _doc(**kw: Any) -> dict[str, Any]:
    doc = {
        "_type": "edgeflux.desired-state/v1",
        "device_id": "robot-1",
        "bundle": {"name": "pendulum", "version": "1.1.0", "sequence": 2},
        "generation": 3,
        "issued_at": "2026-06-01T00:00:00Z",
        "expires": "2026-06-01T01:00:00Z",
    }
    doc.update(kw)
    return doc


def _sign(
    key: ed25519.Ed25519PrivateKey, doc: dict[str, Any], ptype: str = DESIRED_STATE_PAYLOAD_TYPE
) -> bytes:
    env = Envelope(payload=json.dumps(doc).encode(), payload_type=ptype, signatures={})
    env.sign(CryptoSigner(key))  # type: ignore[arg-type]
    return json.dumps(env.to_dict()).encode()


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def test_a_director_signed_document_for_this_device_verifies(
    key: ed25519.Ed25519PrivateKey,
) -> None:
    doc = verify_desired_state(_sign(key, _doc()), key.public_key(), "robot-1", NOW)
    assert doc.bundle is not None and doc.bundle.sequence == 2 and doc.generation == 3


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("other_key", "not signed by the director"),
        ("payload_type", "payloadType"),
        ("other_device", "names device 'robot-2'"),
        ("expired", "expired"),
        ("tampered", "not signed by the director"),
        ("garbage", "not a DSSE envelope"),
        ("wrong_schema", "not a edgeflux.desired-state/v1"),
        ("sequence_text", "bundle.sequence"),
        ("no_name", "bundle.name"),
        ("naive_time", "has no time zone"),
        ("negative_generation", "generation"),
    ],
)
def test_bad_desired_state_is_refused_with_a_reason(
    key: ed25519.Ed25519PrivateKey, case: str, match: str
) -> None:
    raw = _sign(key, _doc())
    if case == "other_key":
        raw = _sign(ed25519.Ed25519PrivateKey.generate(), _doc())
    elif case == "payload_type":
        raw = _sign(key, _doc(), "application/json")
    elif case == "other_device":
        raw = _sign(key, _doc(device_id="robot-2"))
    elif case == "expired":
        raw = _sign(key, _doc(expires="2026-05-31T00:00:00Z"))
    elif case == "tampered":
        env = json.loads(raw)
        forged = _doc(bundle={"name": "pendulum", "version": "0.1.0", "sequence": 1})

        env["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
        raw = json.dumps(env).encode()
    elif case == "garbage":
        raw = b"\x00not json"
    elif case == "wrong_schema":
        raw = _sign(key, _doc(_type="something/else"))
    elif case == "sequence_text":
        raw = _sign(key, _doc(bundle={"name": "pendulum", "version": "1", "sequence": "2"}))
    elif case == "no_name":
        raw = _sign(key, _doc(bundle={"version": "1", "sequence": 2}))
    elif case == "naive_time":
        raw = _sign(key, _doc(expires="2026-06-01T01:00:00"))
    elif case == "negative_generation":
        raw = _sign(key, _doc(generation=-1))
    with pytest.raises(UpdateError, match=match) as err:
        verify_desired_state(raw, key.public_key(), "robot-1", NOW)
    assert err.value.reason is Reason.DESIRED_STATE_INVALID
