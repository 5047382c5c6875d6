"""Trust store roles and key ids; anti-rollback counters (persisted, monotonic, fail closed)."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from runtime.antirollback import AntiRollbackError, AntiRollbackStore
from runtime.bundle import BundleRollbackError, verify_bundle
from runtime.trust import TrustStore, TrustStoreError
from tests.bundle.conftest import Keys


def _pem(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------- trust store


def test_key_id_is_the_model_signing_hint(keys: Keys, bundle: Path) -> None:
    # model-signing: hint = sha256(SubjectPublicKeyInfo PEM).hexdigest()
    assert keys.key_id == hashlib.sha256(keys.public.read_bytes()).hexdigest()
    sig = json.loads((bundle / "model.sig").read_text())
    assert sig["verificationMaterial"]["publicKey"]["hint"] == keys.key_id


def test_add_list_remove_by_role(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust")
    model_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    att_key = ed25519.Ed25519PrivateKey.generate().public_key()
    mid = store.add("models", _pem(model_key))
    aid = store.add("attestation", _pem(att_key))
    assert store.list("models") == [mid] and store.list("attestation") == [aid]
    assert isinstance(store.public_keys("attestation")[aid], ed25519.Ed25519PublicKey)
    assert store.add("models", _pem(model_key)) == mid  # idempotent
    store.remove("models", mid[:10])
    assert store.list("models") == [] and store.list("attestation") == [aid]


def test_role_takes_only_its_key_kind(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust")
    ed = _pem(ed25519.Ed25519PrivateKey.generate().public_key())
    p256 = _pem(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(TrustStoreError, match="role 'models' takes ECDSA"):
        store.add("models", ed)
    with pytest.raises(TrustStoreError, match="role 'attestation' takes Ed25519"):
        store.add("attestation", p256)
    with pytest.raises(TrustStoreError, match="unknown role 'firmware'"):
        store.add("firmware", p256)
    assert not (tmp_path / "trust" / "models").exists() or store.list("models") == []


def test_remove_unknown_key_lists_what_is_trusted(tmp_path: Path, keys: Keys) -> None:
    store = TrustStore(tmp_path / "trust")
    kid = store.add("models", keys.public.read_bytes())
    with pytest.raises(TrustStoreError, match=f"trusted: \\['{kid}'\\]"):
        store.remove("models", "deadbeefdeadbeef")
    assert store.list("models") == [kid]


def test_key_id_comes_from_content_not_file_name(tmp_path: Path, keys: Keys) -> None:
    store = TrustStore(tmp_path / "trust")
    kid = store.add("models", keys.public.read_bytes())
    (store.role_dir("models") / f"{kid}.pem").rename(store.role_dir("models") / f"{'0' * 64}.pem")
    assert store.list("models") == [kid]


# --------------------------------------------------------------------- anti-rollback


def test_counter_starts_empty_advances_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "var" / "antirollback.json"
    store = AntiRollbackStore(path)
    assert store.committed("pendulum") is None
    store.commit("pendulum", 3, "a" * 64)
    store.commit("pendulum", 5)
    reopened = AntiRollbackStore(path)
    assert reopened.committed("pendulum") == 5
    assert reopened.committed("other") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []


def test_commit_never_decreases(tmp_path: Path) -> None:
    store = AntiRollbackStore(tmp_path / "ar.json")
    store.commit("pendulum", 5)
    before = (tmp_path / "ar.json").read_bytes()
    with pytest.raises(BundleRollbackError, match="sequence 4 is below the committed sequence 5"):
        store.commit("pendulum", 4)
    assert (tmp_path / "ar.json").read_bytes() == before


def test_commit_of_same_sequence_with_other_digest_is_refused(tmp_path: Path) -> None:
    store = AntiRollbackStore(tmp_path / "ar.json")
    store.commit("pendulum", 5, "a" * 64)
    store.commit("pendulum", 5, "a" * 64)  # re-committing the same bundle is fine
    with pytest.raises(BundleRollbackError, match="different content"):
        store.commit("pendulum", 5, "b" * 64)
    assert store.committed_digest("pendulum") == "a" * 64


def test_commit_rejects_a_non_integer_sequence(tmp_path: Path) -> None:
    store = AntiRollbackStore(tmp_path / "ar.json")
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="non-negative integer"):
            store.commit("pendulum", bad)  # type: ignore[arg-type]
    assert not (tmp_path / "ar.json").exists()


BAD_COUNTERS = [
    '{"schema": "something/else", "counters": {}}',
    '{"schema": "edgeflux.antirollback/v1", "counters": {"p": {"sequence": "5"}}}',
    "\x00garbage",
]


@pytest.mark.parametrize("content", BAD_COUNTERS, ids=["schema", "mistyped", "garbage"])
def test_corrupt_counter_file_raises_instead_of_reading_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "ar.json"
    path.write_text(content)
    store = AntiRollbackStore(path)
    with pytest.raises(AntiRollbackError):
        store.committed("p")
    with pytest.raises(AntiRollbackError):
        store.commit("p", 9)
    assert path.read_text() == content


def test_verification_reads_but_never_advances_the_counter(
    make_bundle,
    trust: TrustStore,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = AntiRollbackStore(tmp_path / "ar.json")
    verified = verify_bundle(make_bundle(sequence=7), trust, counters=store)
    assert store.committed("pendulum") is None
    store.commit(verified.manifest.name, verified.manifest.sequence, verified.root_digest)
    assert store.committed("pendulum") == 7
    # The same bundle verifies again after its commit (a reboot re-verifies the active slot).
    verify_bundle(verified.path, trust, counters=store)


def test_concurrent_commits_lose_no_update(tmp_path: Path) -> None:
    # flock excludes separate open() calls even inside one process, so threads exercise
    # the same lock separate processes would; fsync releases the GIL, so unlocked
    # read-modify-write cycles would interleave and drop names.
    path = tmp_path / "ar.json"
    start = threading.Barrier(12)

    def commit_once(i: int) -> None:
        store = AntiRollbackStore(path)
        start.wait(timeout=30)
        store.commit(f"b{i}", i + 1)

    with ThreadPoolExecutor(max_workers=12) as pool:
        for future in [pool.submit(commit_once, i) for i in range(12)]:
            future.result(timeout=60)
    assert AntiRollbackStore(path).all() == {f"b{i}": i + 1 for i in range(12)}
