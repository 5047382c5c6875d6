"""Tamper-evident audit log: a hash chain of canonical-JSON records plus signed
RFC 6962 Merkle tree heads, with inclusion and consistency proofs.

On disk it is one JSON object per line (append-only; `runtime.atomicio` replaces whole
files and does not fit a log that only grows — durability comes from flush + fsync at
every tree head instead):

    {"kind":"record","seq":0,"prev":"<hex sha256 of previous record line>","body":{...}}
    {"kind":"tree_head","size":N,"root":"<hex>","time":T,"key_id":"<hex>","sig":"<b64>"}

Leaves are `SHA-256(0x00 || canonical record)`, inner nodes `SHA-256(0x01 || l || r)`
and the tree head is MTH(D[0:N]) (RFC 6962 §2.1). The signature is Ed25519 over the
canonical JSON of {"root","size","time"}. `verify_log` re-derives the chain and every
tree head, so a deleted, reordered or altered record, or a forged head, is reported
with the line where it was found. A record appended after the last head is covered by
the chain but not yet by a signature; the report says how many.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud.router.errors import AuditError, AuditVerificationError

__all__ = [
    "AuditLog",
    "AuditReport",
    "audit_log_id",
    "canonical_json",
    "consistency_proof",
    "inclusion_proof",
    "key_id",
    "leaf_hash",
    "merkle_root",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity (they have no JSON form)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n ≥ 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 6962 §2.1)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return _node(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1."""
    n = len(leaves)
    if not 0 <= index < n:
        raise AuditError(f"leaf {index} is not in a tree of size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), merkle_root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), merkle_root(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [merkle_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), merkle_root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), merkle_root(leaves[:k])]


def consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 §2.1.2."""
    if not 0 < m <= len(leaves):
        raise AuditError(f"no consistency proof from size {m} to size {len(leaves)}")
    return _subproof(m, leaves, True)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0 or first > second or (not proof and first & (first - 1)):
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path = [first_root, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def audit_log_id(public_key: Ed25519PublicKey, path: str | os.PathLike[str]) -> str:
    """The name a log's heads are kept under outside it: its key and its file."""
    where = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return f"{key_id(public_key)[:16]}:{where}"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class _CompactTree:
    """Running MTH in O(log n) per append: a stack of perfect subtrees, largest first."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, bytes]] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        h, size = leaf, 1
        while self.stack and self.stack[-1][0] == size:
            _, left = self.stack.pop()
            h = _node(left, h)
            size *= 2
        self.stack.append((size, h))
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        r = self.stack[-1][1]
        for _, h in reversed(self.stack[:-1]):
            r = _node(h, r)
        return r


def _head_message(size: int, root_hex: str, time: float) -> bytes:
    return canonical_json({"root": root_hex, "size": size, "time": time})


class AuditLog:
    """Append records; sign a tree head every `every_n` records or `every_s` seconds.

    `path=None` keeps the log in memory (tests, the benchmark); `lines()` returns it.
    """

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        path: str | os.PathLike[str] | None = None,
        *,
        every_n: int = 256,
        every_s: float = 10.0,
        clock: Callable[[], float] | None = None,
        keep_leaves: bool = True,
        on_head: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`keep_leaves=False` keeps only the O(log n) running tree (a long-running
        service); proofs are then computed from the file (`leaf_hash` per record line).
        `on_head` receives every signed head once it is on disk (a witness outside the
        log). A new file log starts with a signed head of size 0, so an emptied file
        never passes as a fresh one."""
        import time as _time

        self._key = signing_key
        self.key_id = key_id(signing_key.public_key())
        self.every_n, self.every_s = every_n, every_s
        self._clock = clock or _time.time
        self._tree = _CompactTree()
        self.leaves: list[bytes] = []
        self._keep_leaves = keep_leaves
        self._prev = "0" * 64
        self._since_head = 0
        self._last_head_at = self._clock()
        self.last_head: dict[str, Any] | None = None
        self._memory: list[bytes] | None = [] if path is None else None
        self._path: Path | None = None
        self._buf: list[bytes] = []
        self._on_head = on_head
        if path is not None:
            p = Path(path)
            fresh = not (p.exists() and p.stat().st_size)
            if not fresh:
                self._resume(p)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._path = p
            if fresh:
                self.sign_head()

    def _resume(self, p: Path) -> None:
        for i, raw in enumerate(p.read_bytes().splitlines(), 1):
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise AuditError(
                    f"{p}:{i}: not JSON (a torn last line after a power loss?); check it with "
                    "`edgeflux cloud router audit verify` and cut a torn tail with "
                    "`edgeflux cloud router audit repair`"
                ) from exc
            if obj.get("kind") == "record":
                data = canonical_json(obj)
                leaf = leaf_hash(data)
                if self._keep_leaves:
                    self.leaves.append(leaf)
                self._tree.append(leaf)
                self._prev = hashlib.sha256(data).hexdigest()
                self._since_head += 1
            elif obj.get("kind") == "tree_head":
                self._since_head = 0
                self.last_head = obj

    @property
    def size(self) -> int:
        return self._tree.size

    def _write(self, data: bytes) -> None:
        if self._memory is not None:
            self._memory.append(data)
        else:
            self._buf.append(data + b"\n")

    def flush(self, sync: bool = False) -> None:
        """Write the lines appended since the last flush.

        One unbuffered write(2) of whole lines per batch, so a reader (RouterStats, the
        CLI) never sees half a line; the file is open only while writing.
        """
        if self._path is None or not self._buf:
            return
        data, self._buf = b"".join(self._buf), []
        with self._path.open("ab", buffering=0) as fh:
            fh.write(data)
            if sync:
                os.fsync(fh.fileno())

    def append(self, body: dict[str, Any]) -> str:
        """Append one record; return its hash (hex). May also emit a signed tree head."""
        record = {"kind": "record", "seq": self._tree.size, "prev": self._prev, "body": body}
        data = canonical_json(record)
        self._write(data)
        leaf = leaf_hash(data)
        if self._keep_leaves:
            self.leaves.append(leaf)
        self._tree.append(leaf)
        self._prev = hashlib.sha256(data).hexdigest()
        self._since_head += 1
        if self._since_head >= self.every_n or self._clock() - self._last_head_at >= self.every_s:
            self.sign_head()
        return self._prev

    def sign_head(self) -> dict[str, Any]:
        now = round(self._clock(), 6)
        root = self._tree.root().hex()
        sig = self._key.sign(_head_message(self._tree.size, root, now))
        head = {
            "kind": "tree_head",
            "size": self._tree.size,
            "root": root,
            "time": now,
            "key_id": self.key_id,
            "sig": base64.b64encode(sig).decode(),
        }
        self._write(canonical_json(head))
        self._since_head = 0
        self._last_head_at = now
        self.last_head = head
        self.flush(sync=True)
        if self._on_head is not None:
            self._on_head(head)
        return head

    def lines(self) -> list[bytes]:
        if self._memory is None:
            raise AuditError("lines() is for in-memory logs; read the file instead")
        return list(self._memory)

    def close(self) -> None:
        """Sign a final tree head over any unsigned records and write everything."""
        if self._since_head:
            self.sign_head()
        self.flush(sync=True)


@dataclass(frozen=True)
class AuditReport:
    records: int
    tree_heads: int
    unsigned_tail: int
    root: str


def verify_log(
    lines: Iterable[bytes],
    public_key: Ed25519PublicKey,
    where: str = "log",
    *,
    witness: Sequence[dict[str, Any]] = (),
    size: int | None = None,
    root: str | None = None,
    strict: bool = False,
) -> AuditReport:
    """Check the whole log; raise AuditVerificationError at the first problem.

    `witness`: signed heads kept outside the log (the store, an exported file); each
    must verify, be present in the log and match the log's records up to its size, so a
    deleted head, a truncation or records rewritten and re-chained after a head fail.
    `size` / `root`: a size or head the caller knows (the log must be at least that long;
    its first `size` records must hash to `root`; `root` alone must be a head's root).
    `strict` (the operator's check of a stopped plane): the log must have a signed head
    and no unsigned tail.
    """
    kid = key_id(public_key)
    tree = _CompactTree()
    leaves: list[bytes] = []
    prev = "0" * 64
    heads = 0
    last_head_size = 0
    seen: dict[int, str] = {}
    for lineno, raw in enumerate(lines, 1):
        at = f"{where}:{lineno}"
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise AuditVerificationError(f"{at}: not valid JSON (torn or edited line)") from exc
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind == "record":
            if canonical_json(obj) != raw.rstrip(b"\r\n"):
                raise AuditVerificationError(f"{at}: record is not in canonical form (edited?)")
            if obj.get("seq") != tree.size:
                raise AuditVerificationError(
                    f"{at}: record seq {obj.get('seq')!r}, expected {tree.size} "
                    "(a record was deleted, inserted or reordered)"
                )
            if obj.get("prev") != prev:
                raise AuditVerificationError(
                    f"{at}: record {tree.size} does not chain to the previous record "
                    "(the previous record was altered, deleted or reordered)"
                )
            data = canonical_json(obj)
            leaf = leaf_hash(data)
            leaves.append(leaf)
            tree.append(leaf)
            prev = hashlib.sha256(data).hexdigest()
        elif kind == "tree_head":
            head_size, root_hex = _check_head(obj, public_key, kid, at)
            if heads and head_size <= last_head_size:
                raise AuditVerificationError(
                    f"{at}: tree head of size {head_size} after one of size {last_head_size} "
                    "(a duplicated or replayed head)"
                )
            if head_size > tree.size:
                raise AuditVerificationError(
                    f"{at}: tree head size {head_size} does not fit the {tree.size} records "
                    "before it"
                )
            expect = tree.root() if head_size == tree.size else merkle_root(leaves[:head_size])
            if expect.hex() != root_hex:
                raise AuditVerificationError(
                    f"{at}: tree head root does not match records 0..{head_size - 1} "
                    "(a covered record was altered)"
                )
            heads += 1
            last_head_size = head_size
            seen[head_size] = root_hex
        else:
            raise AuditVerificationError(f"{at}: unknown line kind {kind!r}")
    n = tree.size
    for i, w in enumerate(witness, 1):
        w_size, w_root = _check_head(w, public_key, kid, f"witness head {i}")
        if w_size > n:
            raise AuditVerificationError(
                f"{where}: truncated: a witnessed tree head covers {w_size} records, "
                f"the log has {n}"
            )
        if merkle_root(leaves[:w_size]).hex() != w_root:
            raise AuditVerificationError(
                f"{where}: records 0..{w_size - 1} differ from the witnessed tree head of "
                f"size {w_size} (rewritten and re-chained?)"
            )
        if seen.get(w_size) != w_root:
            raise AuditVerificationError(
                f"{where}: the witnessed tree head of size {w_size} is missing from the log "
                "(deleted)"
            )
    if size is not None:
        if size > n:
            raise AuditVerificationError(
                f"{where}: truncated: expected at least {size} records, the log has {n}"
            )
        if root is not None and merkle_root(leaves[:size]).hex() != root:
            raise AuditVerificationError(
                f"{where}: records 0..{size - 1} do not hash to the given root {root[:16]}…"
            )
    elif root is not None and root not in seen.values() and root != tree.root().hex():
        raise AuditVerificationError(f"{where}: no tree head of the log has root {root[:16]}…")
    if strict and not heads:
        raise AuditVerificationError(f"{where}: no signed tree head (empty or stripped log)")
    if strict and n > last_head_size:
        raise AuditVerificationError(
            f"{where}: {n - last_head_size} records after the last signed tree head "
            "(an unsigned tail: the plane did not stop cleanly, or heads were removed)"
        )
    return AuditReport(n, heads, n - last_head_size, tree.root().hex())


def _check_head(obj: Any, public_key: Ed25519PublicKey, kid: str, at: str) -> tuple[int, str]:
    """A head's size and root, once its form, key and signature are checked."""
    try:
        size, root_hex, t = int(obj["size"]), str(obj["root"]), obj["time"]
        sig = base64.b64decode(obj["sig"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditVerificationError(f"{at}: malformed tree head") from exc
    if obj.get("key_id") != kid:
        raise AuditVerificationError(
            f"{at}: tree head signed by key {obj.get('key_id')!r}, expected {kid}"
        )
    try:
        public_key.verify(sig, _head_message(size, root_hex, t))
    except InvalidSignature as exc:
        raise AuditVerificationError(f"{at}: tree head signature is invalid (forged head)") from exc
    if size < 0:
        raise AuditVerificationError(f"{at}: tree head size {size} is negative")
    return size, root_hex
