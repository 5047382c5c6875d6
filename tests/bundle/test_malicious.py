"""Hostile bundles: each is refused with a specific error and a message that says why,
and verifying it changes nothing on disk (bundle directory and counter file alike)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import helper

from runtime.antirollback import AntiRollbackError, AntiRollbackStore
from runtime.bundle import (
    BundleCompatibilityError,
    BundleDigestError,
    BundleError,
    BundleFileSetError,
    BundleManifestError,
    BundleOnnxError,
    BundleRollbackError,
    BundleSignatureError,
    DeviceProfile,
    create_bundle,
    generate_signing_key,
    sign_bundle,
    verify_bundle,
)
from runtime.trust import TrustStore
from tests.bundle.conftest import (
    BundleFactory,
    Keys,
    force_sign,
    make_manifest,
    make_policy,
    rewrite_manifest,
    snapshot,
)


def assert_refused(
    bundle: Path,
    trust: TrustStore,
    error: type[BundleError],
    fragment: str,
    **kwargs: Any,
) -> BundleError:
    """verify_bundle raises exactly `error` mentioning `fragment`, and writes nothing."""
    counters: AntiRollbackStore | None = kwargs.get("counters")
    before = snapshot(bundle)
    counters_before = counters.path.read_bytes() if counters and counters.path.exists() else None
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle, trust, **kwargs)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert re.search(fragment, str(info.value)), str(info.value)
    assert snapshot(bundle) == before
    if counters is not None:
        after = counters.path.read_bytes() if counters.path.exists() else None
        assert after == counters_before
    return info.value


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------- bytes changed


def test_flipped_byte_in_policy_is_a_digest_error(bundle: Path, trust: TrustStore) -> None:
    flip_byte(bundle / "policy.onnx", offset=40)
    assert_refused(bundle, trust, BundleDigestError, r"policy\.onnx has sha256 .* modified")


def test_flipped_byte_in_manifest_is_a_digest_error(bundle: Path, trust: TrustStore) -> None:
    flip_byte(bundle / "edgeflux.json", offset=10)
    assert_refused(bundle, trust, BundleDigestError, r"edgeflux\.json has sha256")


def test_signature_copied_from_another_bundle_is_a_digest_error(
    make_bundle: BundleFactory, trust: TrustStore
) -> None:
    a = make_bundle()
    b = make_bundle(policy_kwargs={"seed": 7})
    shutil.copyfile(b / "model.sig", a / "model.sig")
    assert_refused(a, trust, BundleDigestError, r"(edgeflux\.json|policy\.onnx) has sha256")


def test_tampered_signed_payload_fails_the_signature(bundle: Path, trust: TrustStore) -> None:
    sig = json.loads((bundle / "model.sig").read_text())
    import base64

    payload = base64.b64decode(sig["dsseEnvelope"]["payload"]).replace(b'"policy', b'"polish')
    sig["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    (bundle / "model.sig").write_text(json.dumps(sig))
    assert_refused(bundle, trust, BundleSignatureError, "does not verify with trusted key")


# --------------------------------------------------------------------- file set


def test_extra_file_is_refused(bundle: Path, trust: TrustStore) -> None:
    (bundle / "notes.txt").write_text("unsigned")
    assert_refused(bundle, trust, BundleFileSetError, r"\['notes\.txt'\] are not covered")


def test_extra_hidden_git_directory_is_refused(bundle: Path, trust: TrustStore) -> None:
    (bundle / ".git").mkdir()
    (bundle / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert_refused(bundle, trust, BundleFileSetError, r"\.git/HEAD")


def test_extra_empty_directory_is_refused(bundle: Path, trust: TrustStore) -> None:
    (bundle / "stuff").mkdir()
    assert_refused(bundle, trust, BundleFileSetError, r"directories \['stuff'\]")


def test_missing_file_is_refused(bundle: Path, trust: TrustStore) -> None:
    (bundle / "edgeflux.json").unlink()
    assert_refused(bundle, trust, BundleFileSetError, r"signed files \['edgeflux\.json'\] are")


def test_renamed_file_is_refused(bundle: Path, trust: TrustStore) -> None:
    (bundle / "policy.onnx").rename(bundle / "policy2.onnx")
    assert_refused(bundle, trust, BundleFileSetError, r"policy2\.onnx")


def test_symlink_in_bundle_is_refused(bundle: Path, trust: TrustStore) -> None:
    (bundle / "alias.onnx").symlink_to("policy.onnx")
    assert_refused(bundle, trust, BundleFileSetError, "alias.onnx is a symlink")


def test_signed_file_replaced_by_symlink_is_refused(
    bundle: Path, trust: TrustStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / "policy.onnx", outside)
    (bundle / "policy.onnx").unlink()
    (bundle / "policy.onnx").symlink_to(outside)
    assert_refused(bundle, trust, BundleFileSetError, "policy.onnx is a symlink")


def test_hardlinked_file_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    os.link(bundle / "policy.onnx", tmp_path / "elsewhere.onnx")
    assert_refused(bundle, trust, BundleFileSetError, "policy.onnx has 2 hard links")


def test_fifo_in_bundle_is_refused(bundle: Path, trust: TrustStore) -> None:
    os.mkfifo(bundle / "pipe")
    assert_refused(bundle, trust, BundleFileSetError, "pipe is a FIFO")


def test_empty_directory_has_no_signature(tmp_path: Path, trust: TrustStore) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(empty, trust, BundleSignatureError, r"model\.sig: missing")


def test_bundle_path_that_is_a_symlink_is_refused(
    bundle: Path, trust: TrustStore, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(bundle)
    assert_refused(link, trust, BundleFileSetError, "is a symlink, not a bundle directory")


# --------------------------------------------------------------------- signature envelope


def test_signature_by_untrusted_key_names_signer_and_trusted_keys(
    make_bundle: BundleFactory, trust: TrustStore, keys: Keys, tmp_path: Path
) -> None:
    bdir = make_bundle(sign=False)
    other = generate_signing_key(tmp_path / "o.pem", tmp_path / "o.pub")
    sign_bundle(bdir, tmp_path / "o.pem")
    err = assert_refused(bdir, trust, BundleSignatureError, "which is not in")
    assert other[:12] in str(err) and keys.key_id[:12] in str(err)
    assert str(trust.role_dir("models")) in str(err)


def test_hint_of_trusted_key_on_signature_by_other_key_is_refused(
    make_bundle: BundleFactory, trust: TrustStore, keys: Keys, tmp_path: Path
) -> None:
    bdir = make_bundle(sign=False)
    generate_signing_key(tmp_path / "o.pem", tmp_path / "o.pub")
    force_sign(bdir, tmp_path / "o.pem", hint=keys.key_id)
    assert_refused(bdir, trust, BundleSignatureError, "does not verify with trusted key")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"mediaType": "application/vnd.dev.sigstore.bun', "not JSON"),
        (b"\x00\x01 this is not json", "not JSON"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"mediaType": "application/x-other"}', "mediaType is 'application/x-other'"),
    ],
    ids=["truncated", "binary", "json-array", "wrong-media-type"],
)
def test_malformed_signature_file_is_refused(
    bundle: Path, trust: TrustStore, content: bytes, fragment: str
) -> None:
    (bundle / "model.sig").write_bytes(content)
    assert_refused(bundle, trust, BundleSignatureError, re.escape(fragment))


def test_certificate_mode_signature_is_refused(bundle: Path, trust: TrustStore) -> None:
    sig = json.loads((bundle / "model.sig").read_text())
    sig["verificationMaterial"] = {"certificate": {"rawBytes": "AAAA"}, "tlogEntries": []}
    (bundle / "model.sig").write_text(json.dumps(sig))
    assert_refused(bundle, trust, BundleSignatureError, "only key mode")


def test_wrong_payload_type_is_refused_even_when_validly_signed(
    bundle: Path, trust: TrustStore, keys: Keys
) -> None:
    force_sign(bundle, keys.private, payload_type="application/json")
    assert_refused(bundle, trust, BundleSignatureError, "payloadType is 'application/json'")


def test_wrong_predicate_type_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    def mutate(s: dict[str, Any]) -> None:
        s["predicateType"] = "https://model_signing/Digests/v0.1"

    force_sign(bundle, keys.private, mutate=mutate)
    assert_refused(bundle, trust, BundleSignatureError, "predicateType is 'https://model_signing")


def test_duplicate_signature_envelope_is_refused(
    bundle: Path, trust: TrustStore, keys: Keys
) -> None:
    force_sign(bundle, keys.private, extra_signatures=1)
    assert_refused(bundle, trust, BundleSignatureError, "has 2 signatures; exactly one")


def test_inconsistent_root_digest_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    def mutate(s: dict[str, Any]) -> None:
        s["subject"][0]["digest"]["sha256"] = "0" * 64

    force_sign(bundle, keys.private, mutate=mutate)
    assert_refused(bundle, trust, BundleSignatureError, "does not match the resources")


def test_resource_name_with_traversal_is_refused(
    bundle: Path, trust: TrustStore, keys: Keys
) -> None:
    def mutate(s: dict[str, Any]) -> None:
        s["predicate"]["resources"][0]["name"] = "../edgeflux.json"

    force_sign(bundle, keys.private, mutate=mutate)
    assert_refused(bundle, trust, BundleSignatureError, "not a plain relative path")


def test_no_trusted_keys_is_refused_with_advice(bundle: Path, tmp_path: Path) -> None:
    assert_refused(bundle, TrustStore(tmp_path / "empty"), BundleSignatureError, "trust add")


# --------------------------------------------------------------------- manifest


def test_manifest_with_wrong_schema_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    rewrite_manifest(bundle, lambda d: d.update(schema="edgeflux.bundle/v9"))
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleManifestError, "schema is 'edgeflux.bundle/v9'")


def test_manifest_missing_field_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    rewrite_manifest(bundle, lambda d: d.pop("sequence"))
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleManifestError, "sequence: Field required")


def test_manifest_mistyped_field_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    rewrite_manifest(bundle, lambda d: d["control"].update(rate_hz="fast"))
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleManifestError, "control.rate_hz")


def test_manifest_not_json_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    (bundle / "edgeflux.json").write_text("{not json")
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleManifestError, "not valid JSON")


def test_io_spec_contradicting_graph_is_refused(
    bundle: Path, trust: TrustStore, keys: Keys
) -> None:
    rewrite_manifest(bundle, lambda d: d["io"]["inputs"][0].update(name="observation"))
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleOnnxError, r"manifest io\.inputs names \['observation'\]")


def test_io_dtype_contradicting_graph_is_refused(
    bundle: Path, trust: TrustStore, keys: Keys
) -> None:
    rewrite_manifest(bundle, lambda d: d["io"]["outputs"][0].update(dtype="float16"))
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleOnnxError, "'action' is float32 in the graph")


# --------------------------------------------------------------------- ONNX content


def _set_external(model: onnx.ModelProto, location: str) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("/etc/passwd", "absolute or empty locations are refused"),
        ("../../secret.bin", "locations with '..' are refused"),
        ("weights.bin", "the location is a symlink"),
    ],
    ids=["absolute", "dotdot", "symlink"],
)
def test_external_data_reaching_outside_is_refused(
    bundle: Path, trust: TrustStore, keys: Keys, tmp_path: Path, location: str, fragment: str
) -> None:
    model = onnx.load(bundle / "policy.onnx")
    _set_external(model, location)
    onnx.save(model, bundle / "policy.onnx")
    if location == "weights.bin":
        (tmp_path / "real.bin").write_bytes(b"\x00" * 24)
        (bundle / "weights.bin").symlink_to(tmp_path / "real.bin")
        force_sign(bundle, keys.private)
        # The file-set walk meets the symlink before the ONNX check does.
        assert_refused(bundle, trust, BundleFileSetError, "weights.bin is a symlink")
        (bundle / "weights.bin").unlink()
        with pytest.raises(BundleOnnxError, match=fragment):
            create_bundle(_write(model, tmp_path, "weights.bin"), make_manifest(), tmp_path / "x")
        assert not (tmp_path / "x").exists()
        return
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleOnnxError, re.escape(fragment))


def _write(model: onnx.ModelProto, tmp_path: Path, symlink_name: str) -> Path:
    src = tmp_path / "ext"
    src.mkdir()
    onnx.save(model, src / "policy.onnx")
    (src / symlink_name).symlink_to(tmp_path / "real.bin")
    return src / "policy.onnx"


def test_custom_domain_operator_is_refused_unless_allowed(
    tmp_path: Path, keys: Keys, trust: TrustStore, device: DeviceProfile
) -> None:
    custom = helper.make_node("Exfiltrate", ["action"], ["leak"], domain="com.evil")
    policy = make_policy(tmp_path / "p.onnx", extra_nodes=[custom])
    model = onnx.load(policy)
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    onnx.save(model, policy)
    with pytest.raises(BundleOnnxError, match=r"\['com\.evil:Exfiltrate'\] are not on"):
        create_bundle(policy, make_manifest(), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    bdir = create_bundle(
        policy, make_manifest(), tmp_path / "b", allowed_custom_ops=["com.evil:Exfiltrate"]
    )
    sign_bundle(bdir, keys.private)
    assert_refused(bdir, trust, BundleOnnxError, "com.evil:Exfiltrate", device=device)
    allowed = DeviceProfile(**{**device.__dict__, "allowed_custom_ops": ["com.evil:*"]})
    assert verify_bundle(bdir, trust, device=allowed).manifest.name == "pendulum"


def test_truncated_onnx_is_refused(bundle: Path, trust: TrustStore, keys: Keys) -> None:
    data = (bundle / "policy.onnx").read_bytes()
    (bundle / "policy.onnx").write_bytes(data[: len(data) // 2])
    force_sign(bundle, keys.private)
    assert_refused(bundle, trust, BundleOnnxError, "not a valid ONNX model")


# --------------------------------------------------------------------- compatibility


def test_unsupported_opset_is_refused(
    make_bundle: BundleFactory, trust: TrustStore, device: DeviceProfile
) -> None:
    bdir = make_bundle(policy_kwargs={"opset": 22})
    assert_refused(bdir, trust, BundleCompatibilityError, "opset 22.*up to 21", device=device)


def test_newer_runtime_requirement_is_refused(
    make_bundle: BundleFactory, trust: TrustStore, device: DeviceProfile
) -> None:
    bdir = make_bundle(compatibility={"min_runtime_version": "2.0.0"})
    assert_refused(
        bdir,
        trust,
        BundleCompatibilityError,
        r"needs runtime >= 2\.0\.0.*runs 0\.1\.0",
        device=device,
    )


def test_missing_hardware_tag_is_refused(
    make_bundle: BundleFactory, trust: TrustStore, device: DeviceProfile
) -> None:
    bdir = make_bundle(compatibility={"hardware_tags": ["jetson-orin"]})
    assert_refused(bdir, trust, BundleCompatibilityError, r"\['jetson-orin'\]", device=device)


def test_no_common_execution_provider_is_refused(
    make_bundle: BundleFactory, trust: TrustStore, device: DeviceProfile
) -> None:
    bdir = make_bundle(compatibility={"execution_providers": ["TensorrtExecutionProvider"]})
    assert_refused(bdir, trust, BundleCompatibilityError, "execution providers", device=device)


# --------------------------------------------------------------------- anti-rollback


def test_sequence_below_committed_counter_is_a_rollback(
    make_bundle: BundleFactory, trust: TrustStore, tmp_path: Path
) -> None:
    counters = AntiRollbackStore(tmp_path / "antirollback.json")
    counters.commit("pendulum", 5)
    old = make_bundle(sequence=4)
    assert_refused(
        old,
        trust,
        BundleRollbackError,
        "sequence 4 is below the committed sequence 5",
        counters=counters,
    )


def test_same_sequence_with_different_content_is_a_rollback(
    make_bundle: BundleFactory, trust: TrustStore, tmp_path: Path
) -> None:
    counters = AntiRollbackStore(tmp_path / "antirollback.json")
    first = verify_bundle(make_bundle(sequence=3), trust, counters=counters)
    counters.commit("pendulum", 3, first.root_digest)
    other = make_bundle(sequence=3, policy_kwargs={"seed": 9})
    assert_refused(other, trust, BundleRollbackError, "different content", counters=counters)


def test_corrupt_counter_file_fails_closed(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    path = tmp_path / "antirollback.json"
    path.write_text("{ truncated")
    with pytest.raises(BundleRollbackError, match="cannot check anti-rollback") as info:
        verify_bundle(bundle, trust, counters=AntiRollbackStore(path))
    assert isinstance(info.value.__cause__, AntiRollbackError)
    assert "refusing to guess" in str(info.value)
    assert path.read_text() == "{ truncated"


def test_oversized_signature_file_is_refused(bundle: Path, trust: TrustStore) -> None:
    with (bundle / "model.sig").open("ab") as fh:
        fh.write(b" " * (16 << 20))
    assert_refused(bundle, trust, BundleSignatureError, "larger than 16777216 bytes")


def test_signature_without_key_hint_is_matched_against_trusted_keys(
    bundle: Path, trust: TrustStore, keys: Keys, tmp_path: Path
) -> None:
    force_sign(bundle, keys.private, hint="")
    assert verify_bundle(bundle, trust).signer_key_id == keys.key_id
    generate_signing_key(tmp_path / "o.pem", tmp_path / "o.pub")
    force_sign(bundle, tmp_path / "o.pem", hint="")
    assert_refused(bundle, trust, BundleSignatureError, "verifies with none of the trusted keys")


def test_signature_file_that_is_a_fifo_does_not_hang(bundle: Path, trust: TrustStore) -> None:
    (bundle / "model.sig").unlink()
    os.mkfifo(bundle / "model.sig")
    assert_refused(bundle, trust, BundleSignatureError, "missing or not a regular file")


def test_damaged_trust_store_refuses_as_a_signature_error(bundle: Path, trust: TrustStore) -> None:
    (trust.role_dir("models") / "broken.pem").write_text("-----BEGIN PUBLIC KEY-----\nxx\n")
    assert_refused(bundle, trust, BundleSignatureError, "cannot read the trust store")
