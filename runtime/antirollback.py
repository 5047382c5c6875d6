"""Anti-rollback counters: a device never goes back to an older bundle.

One counter per bundle name: the highest ``sequence`` this device has *committed*
(only at COMMITTED, by an explicit `commit` call; verification only
reads). The root digest committed with it is kept too, so a second, different
bundle that reuses the same sequence number is refused as well.

The file is JSON written with `runtime.atomicio` (a reader sees the old file or the
new one); read-modify-write is serialised across processes with an advisory lock.
A corrupt counter file fails closed: it raises instead of reading as "no counters".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.atomicio import atomic_write_json
from runtime.bundle.errors import AntiRollbackError, BundleRollbackError

__all__ = ["AntiRollbackError", "AntiRollbackStore", "BundleRollbackError"]

_SCHEMA = "edgeflux.antirollback/v1"


class AntiRollbackStore:
    """Persistent, monotonic per-bundle-name sequence counters."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AntiRollbackStore({str(self.path)!r})"

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise AntiRollbackError(f"{self.path}: cannot read ({exc.strerror})") from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AntiRollbackError(
                f"{self.path}: corrupt anti-rollback file ({exc}); refusing to guess counters"
            ) from exc
        if not isinstance(data, dict) or data.get("schema") != _SCHEMA:
            raise AntiRollbackError(f"{self.path}: not an {_SCHEMA} file")
        counters = data.get("counters")
        if not isinstance(counters, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sequence"), int) for v in counters.values()
        ):
            raise AntiRollbackError(f"{self.path}: 'counters' is malformed")
        return counters

    def committed(self, name: str) -> int | None:
        """The committed sequence for bundle `name`, or None if none was committed yet."""
        entry = self._read().get(name)
        return None if entry is None else int(entry["sequence"])

    def committed_digest(self, name: str) -> str | None:
        """The root digest committed with that sequence (None if unknown)."""
        entry = self._read().get(name)
        digest = None if entry is None else entry.get("root_digest")
        return digest if isinstance(digest, str) else None

    def all(self) -> dict[str, int]:
        return {name: int(e["sequence"]) for name, e in sorted(self._read().items())}

    def check(self, name: str, sequence: int, root_digest: str | None = None) -> None:
        """Raise BundleRollbackError if installing (name, sequence, digest) would go back."""
        entry = self._read().get(name)
        if entry is None:
            return
        current = int(entry["sequence"])
        if sequence < current:
            raise BundleRollbackError(
                f"bundle {name!r} sequence {sequence} is below the committed sequence "
                f"{current} in {self.path}; refusing to roll back"
            )
        digest = entry.get("root_digest")
        if sequence == current and root_digest and digest and digest != root_digest:
            raise BundleRollbackError(
                f"bundle {name!r} sequence {sequence} is already committed in {self.path} with "
                f"different content (root digest {digest[:12]}…, this bundle "
                f"{root_digest[:12]}…); a new build needs a higher sequence"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def commit(self, name: str, sequence: int, root_digest: str | None = None) -> None:
        """Advance the counter for `name` to `sequence` (durably). Never decreases.

        Raises BundleRollbackError for a lower sequence, or for the same sequence with a
        different root digest; re-committing the same (sequence, digest) is a no-op.
        """
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise ValueError(f"sequence must be a non-negative integer, got {sequence!r}")
        with self._locked():
            self.check(name, sequence, root_digest)
            counters = self._read()
            entry: dict[str, Any] = {"sequence": sequence}
            if root_digest:
                entry["root_digest"] = root_digest
            elif counters.get(name, {}).get("sequence") == sequence:
                return  # same sequence, nothing new to record
            if counters.get(name) == entry:
                return
            counters[name] = entry
            atomic_write_json(self.path, {"schema": _SCHEMA, "counters": counters})
