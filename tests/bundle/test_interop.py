"""Interoperability with the real `model-signing` package (OpenSSF Model Signing v1.0),
in both directions, and proof that robot-side verification never loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bundle import BundleDigestError, BundleSignatureError, verify_bundle
from runtime.trust import TrustStore
from tests.bundle.conftest import BundleFactory, Keys

model_signing = pytest.importorskip("model_signing")  # a cloud/dev extra; CI installs it

REPO = Path(__file__).resolve().parents[2]


def _sign_with_model_signing(bundle_dir: Path, private_key: Path) -> None:
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])
    (
        model_signing.signing.Config()
        .use_elliptic_key_signer(private_key=private_key)
        .set_hashing_config(hashing)
        .sign(bundle_dir, bundle_dir / "model.sig")
    )


def _verify_with_model_signing(bundle_dir: Path, public_key: Path) -> None:
    (
        model_signing.verifying.Config()
        .use_elliptic_key_verifier(public_key=public_key)
        .verify(bundle_dir, bundle_dir / "model.sig")
    )


def test_bundle_signed_by_model_signing_verifies_with_ours(
    make_bundle: BundleFactory, keys: Keys, trust: TrustStore
) -> None:
    bdir = make_bundle(sign=False)
    _sign_with_model_signing(bdir, keys.private)
    verified = verify_bundle(bdir, trust)
    assert verified.signer_key_id == keys.key_id
    assert set(verified.files) == {"policy.onnx", "edgeflux.json"}


def test_bundle_signed_by_ours_verifies_with_model_signing(bundle: Path, keys: Keys) -> None:
    _verify_with_model_signing(bundle, keys.public)


def test_our_signature_has_model_signings_exact_shape(bundle: Path, keys: Keys) -> None:
    ours = (bundle / "model.sig").read_text()
    (bundle / "model.sig").unlink()
    _sign_with_model_signing(bundle, keys.private)
    theirs = (bundle / "model.sig").read_text()

    def shape(obj: object) -> object:
        if isinstance(obj, dict):
            return {k: shape(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [shape(v) for v in obj[:1]]
        return type(obj).__name__

    a = json.loads(ours)
    b = json.loads(theirs)
    assert shape(a) == shape(b)
    assert list(a) == list(b)  # same key order, as written
    assert a["verificationMaterial"]["publicKey"] == b["verificationMaterial"]["publicKey"]

    import base64

    sa = json.loads(base64.b64decode(a["dsseEnvelope"]["payload"]))
    sb = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
    assert shape(sa) == shape(sb)
    assert sa["predicate"]["resources"] == sb["predicate"]["resources"]
    assert sa["subject"][0]["digest"] == sb["subject"][0]["digest"]


def test_both_verifiers_refuse_a_model_signing_bundle_modified_after_signing(
    make_bundle: BundleFactory, keys: Keys, trust: TrustStore
) -> None:
    bdir = make_bundle(sign=False)
    _sign_with_model_signing(bdir, keys.private)
    with (bdir / "policy.onnx").open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(BundleDigestError, match=r"policy\.onnx"):
        verify_bundle(bdir, trust)
    with pytest.raises(ValueError):
        _verify_with_model_signing(bdir, keys.public)


def test_model_signing_bundle_by_untrusted_key_is_refused(
    make_bundle: BundleFactory, trust: TrustStore, tmp_path: Path
) -> None:
    from runtime.bundle import generate_signing_key

    generate_signing_key(tmp_path / "other.pem", tmp_path / "other.pub")
    bdir = make_bundle(sign=False)
    _sign_with_model_signing(bdir, tmp_path / "other.pem")
    with pytest.raises(BundleSignatureError, match="not in"):
        verify_bundle(bdir, trust)


def test_verification_never_imports_the_sigstore_stack(bundle: Path, trust: TrustStore) -> None:
    code = (
        "import json, sys\n"
        "from runtime.bundle import verify_bundle, DeviceProfile\n"
        "from runtime.trust import TrustStore\n"
        f"verify_bundle({str(bundle)!r}, TrustStore({str(trust.directory)!r}))\n"
        "bad = ('model_signing', 'sigstore', 'sigstore_models', 'in_toto_attestation',"
        " 'OpenSSL', 'onnx')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
