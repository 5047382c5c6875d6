"""The one DSSE implementation (`protos.dsse`): the spec's PAE layout, agreement with
securesystemslib, signatures both ways, and that no other PAE is written anywhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from protos.dsse import Envelope, EnvelopeFormatError, pae, sign, signature_verifies

REPO = Path(__file__).resolve().parents[1]
HOME = Path("protos/dsse.py")


@pytest.mark.parametrize(
    ("payload_type", "body", "expected"),
    [
        # the example of the DSSE protocol's "Signature definition"
        (
            "http://example.com/HelloWorld",
            b"hello world",
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world",
        ),
        # lengths are byte counts: the type is UTF-8 encoded before it is counted
        ("é", b"\xff", b"DSSEv1 2 \xc3\xa9 1 \xff"),
        # an empty body still carries its length and the separating space
        ("t", b"", b"DSSEv1 1 t 0 "),
        # spaces inside the fields are not escaped: the lengths delimit them
        ("a b", b"c d", b"DSSEv1 3 a b 3 c d"),
    ],
)
def test_pae_has_the_spec_byte_layout(payload_type: str, body: bytes, expected: bytes) -> None:
    assert pae(payload_type, body) == expected


@given(payload_type=st.text(min_size=1), body=st.binary())
def test_pae_agrees_with_securesystemslib(payload_type: str, body: bytes) -> None:
    theirs = SslibEnvelope(payload=body, payload_type=payload_type, signatures={}).pae()
    assert pae(payload_type, body) == theirs


def test_an_envelope_signed_by_securesystemslib_verifies_here_and_back() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    theirs = SslibEnvelope(payload=b'{"a": 1}', payload_type="application/x", signatures={})
    signer = CryptoSigner(key)  # type: ignore[arg-type]
    theirs.sign(signer)
    raw = json.dumps(theirs.to_dict()).encode()
    ours = Envelope.from_json(raw, max_bytes=1 << 16)
    assert ours.keys_that_verify([("k", key.public_key())]) == ["k"]
    # and ours is read and verified by securesystemslib
    mine = sign(key, "application/x", b"payload", keyid=signer.public_key.keyid)
    back = SslibEnvelope.from_dict(json.loads(mine.to_json()))
    pub = SSlibKey.from_crypto(key.public_key(), keyid=signer.public_key.keyid)
    assert list(back.verify([pub], 1)) == [signer.public_key.keyid]


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_ecdsa_signatures_use_the_curves_hash(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    env = sign(key, "t", b"body")
    assert signature_verifies(key.public_key(), env.signature, env.pae())
    assert not signature_verifies(key.public_key(), env.signature, pae("t", b"bodY"))
    other = ec.generate_private_key(curve).public_key()
    assert env.keys_that_verify([("other", other), ("mine", key.public_key())]) == ["mine"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"x" * 257, "limit 256"),
        (b"{not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"payloadType": "t", "payload": "aGk=", "signatures": [{"sig": "a$"}]}', "base64"),
        (b'{"payloadType": "t", "payload": "aGk=", "signatures": [{"keyid": 1}]}', "keyid"),
    ],
)
def test_malformed_bytes_are_refused_naming_the_field(raw: bytes, fragment: str) -> None:
    with pytest.raises(EnvelopeFormatError, match=fragment):
        Envelope.from_json(raw, max_bytes=256)


def test_single_signature_envelopes_refuse_a_second_entry() -> None:
    obj = sign(ed25519.Ed25519PrivateKey.generate(), "t", b"x").to_json_obj()
    obj["signatures"] *= 2
    assert len(Envelope.from_json_obj(obj).signatures) == 2
    with pytest.raises(EnvelopeFormatError, match="exactly one"):
        Envelope.from_json_obj(obj, single=True)


def _writes_pae(tree: ast.AST) -> list[int]:
    def is_pae(value: object) -> bool:
        if isinstance(value, bytes):
            return b"DSSEv1" in value
        return isinstance(value, str) and value.startswith("DSSEv1")

    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and is_pae(n.value)]


def test_no_other_module_writes_the_pre_authentication_encoding() -> None:
    found = []
    for top in ("runtime", "fleet", "cloud", "tui", "distill", "edgeflux", "protos", "bench"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel == HOME:
                continue
            for line in _writes_pae(ast.parse(path.read_text(), filename=str(path))):
                found.append(f"{rel}:{line}")
    assert not found, f"PAE written outside {HOME}: {found}; call protos.dsse.pae"
    assert _writes_pae(ast.parse((REPO / HOME).read_text())), "the detector finds nothing"


@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_parse_or_are_refused_with_a_reason(raw: bytes) -> None:
    try:
        Envelope.from_json(raw, max_bytes=256)
    except EnvelopeFormatError as exc:
        assert str(exc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    obj=st.fixed_dictionaries(
        {}, optional={"payloadType": _json, "payload": _json | st.just("aGk="), "signatures": _json}
    )
)
def test_arbitrary_envelope_objects_parse_or_are_refused(obj: dict[str, object]) -> None:
    try:
        env = Envelope.from_json_obj(obj)
    except EnvelopeFormatError as exc:
        assert str(exc)
    else:
        assert env.signatures and env.payload_type
