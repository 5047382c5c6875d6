"""The audit log detects deleted, reordered and altered records and forged tree heads."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.router.audit import (
    AuditLog,
    canonical_json,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
    verify_log,
)
from cloud.router.errors import AuditVerificationError

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _log(n: int = 12, every_n: int = 4) -> list[bytes]:
    log = AuditLog(KEY, every_n=every_n, every_s=1e9, clock=lambda: 1000.0)
    for i in range(n):
        log.append({"decision_id": f"t{i}", "backend": "small", "cost_usd": 0.001 * i})
    return log.lines()


def _records(lines: list[bytes]) -> list[int]:
    return [i for i, raw in enumerate(lines) if json.loads(raw)["kind"] == "record"]


def test_an_untouched_log_verifies() -> None:
    report = verify_log(_log(), KEY.public_key())
    assert (report.records, report.tree_heads, report.unsigned_tail) == (12, 3, 0)


def test_a_deleted_record_is_detected() -> None:
    lines = _log()
    del lines[_records(lines)[5]]
    with pytest.raises(AuditVerificationError, match="seq"):
        verify_log(lines, KEY.public_key())


def test_a_deleted_record_with_a_rebuilt_chain_is_caught_by_the_signed_head() -> None:
    lines = _log()
    recs = [json.loads(lines[i]) for i in _records(lines)]
    heads = [raw for raw in lines if json.loads(raw)["kind"] == "tree_head"]
    del recs[1]
    prev = "0" * 64
    rebuilt = []
    for seq, r in enumerate(recs):
        r["seq"], r["prev"] = seq, prev
        data = canonical_json(r)
        prev = hashlib.sha256(data).hexdigest()
        rebuilt.append(data)
    forged = [*rebuilt[:4], heads[0], *rebuilt[4:]]
    with pytest.raises(AuditVerificationError, match="root does not match"):
        verify_log(forged, KEY.public_key())


def test_reordered_records_are_detected() -> None:
    lines = _log()
    i, j = _records(lines)[2], _records(lines)[3]
    lines[i], lines[j] = lines[j], lines[i]
    with pytest.raises(AuditVerificationError, match="seq"):
        verify_log(lines, KEY.public_key())


def test_an_altered_record_is_detected() -> None:
    lines = _log()
    i = _records(lines)[6]
    obj = json.loads(lines[i])
    obj["body"]["backend"] = "large"
    lines[i] = canonical_json(obj)
    with pytest.raises(AuditVerificationError, match=r"does not chain|root does not match"):
        verify_log(lines, KEY.public_key())


def test_an_altered_last_record_is_caught_by_the_last_head() -> None:
    lines = _log(n=8, every_n=4)
    i = _records(lines)[-1]
    obj = json.loads(lines[i])
    obj["body"]["cost_usd"] = 0.0
    lines[i] = canonical_json(obj)
    with pytest.raises(AuditVerificationError, match="root does not match"):
        verify_log(lines, KEY.public_key())


def test_a_forged_tree_head_is_detected() -> None:
    lines = _log()
    head_i = next(i for i, raw in enumerate(lines) if json.loads(raw)["kind"] == "tree_head")
    head = json.loads(lines[head_i])
    head["root"] = "00" * 32
    lines[head_i] = canonical_json(head)
    with pytest.raises(AuditVerificationError, match="signature is invalid"):
        verify_log(lines, KEY.public_key())
    other = Ed25519PrivateKey.generate()
    with pytest.raises(AuditVerificationError, match="signed by key"):
        verify_log(_log(), other.public_key())


def test_a_torn_last_line_is_reported() -> None:
    lines = _log()
    lines[-1] = lines[-1][:20]
    with pytest.raises(AuditVerificationError, match="not valid JSON"):
        verify_log(lines, KEY.public_key())


def test_the_file_log_resumes_and_verifies(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "audit.jsonl"  # type: ignore[operator]
    log = AuditLog(KEY, path, every_n=3)
    for i in range(5):
        log.append({"i": i})
    log.close()
    log = AuditLog(KEY, path, every_n=3)
    log.append({"i": 5})
    log.close()
    report = verify_log(path.read_bytes().splitlines(), KEY.public_key())
    assert report.records == 6 and report.unsigned_tail == 0


@pytest.mark.parametrize("n", range(1, 18))
def test_inclusion_proofs_verify_for_every_leaf(n: int) -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(n)]
    root = merkle_root(leaves)
    for i in range(n):
        proof = inclusion_proof(i, leaves)
        assert verify_inclusion(leaves[i], i, n, proof, root)
        assert not verify_inclusion(leaf_hash(b"x"), i, n, proof, root)


@pytest.mark.parametrize("n", range(2, 18))
def test_consistency_proofs_verify_between_every_pair_of_sizes(n: int) -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(n)]
    for m in range(1, n + 1):
        proof = consistency_proof(m, leaves)
        old, new = merkle_root(leaves[:m]), merkle_root(leaves)
        assert verify_consistency(m, n, old, new, proof)
        if m < n:
            assert not verify_consistency(m, n, leaf_hash(b"forged"), new, proof)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 33])
def test_the_running_tree_head_equals_the_rfc6962_root(n: int) -> None:
    log = AuditLog(KEY, every_n=10**9, every_s=1e9, clock=lambda: 0.0)
    for i in range(n):
        log.append({"i": i})
    head = log.sign_head()
    assert head["root"] == merkle_root(log.leaves).hex()
