"""Repair an audit log whose last line was torn (power loss mid-write).

The plane refuses to start on a log it cannot parse. `repair_log` cuts a torn last
line — only the last one, and only if it is not a whole line: anything else is an
edit, left for `verify_log` to report — after recording it: the cut bytes are appended
to ``<log>.torn`` and a `repair` record (size, SHA-256, a prefix) is appended to the
log under a freshly signed tree head, so the repair itself is audited.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.router.audit import AuditLog
from cloud.router.errors import AuditError

__all__ = ["Repair", "repair_log"]


@dataclass(frozen=True)
class Repair:
    line: int
    """Line number of the torn line."""
    cut_bytes: int
    sha256: str
    kept: bool = False
    """True: the line was whole but lacked its newline; it was kept, not cut."""


def repair_log(
    path: Path,
    signing_key: Ed25519PrivateKey,
    *,
    on_head: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Repair | None:
    """Cut a torn last line of the log at `path`; None if there is none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path}: {exc}") from exc
    if not data or data.endswith(b"\n"):
        for i, raw in enumerate(data.splitlines(), 1):
            try:
                json.loads(raw)
            except ValueError:
                raise AuditError(
                    f"{path}:{i}: not JSON, but not a torn last line either (edited?); "
                    "not repairing"
                ) from None
        return None
    start = data.rfind(b"\n") + 1
    torn = data[start:]
    line = data[:start].count(b"\n") + 1
    digest = hashlib.sha256(torn).hexdigest()
    try:
        json.loads(torn)
        whole = True
    except ValueError:
        whole = False
    with path.open("ab") as fh:
        if whole:  # a whole line: only its newline is missing
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    if not whole:
        side = path.with_name(path.name + ".torn")
        with side.open("ab") as fh:
            fh.write(
                json.dumps(
                    {
                        "at": clock(),
                        "line": line,
                        "sha256": digest,
                        "bytes_b64": base64.b64encode(torn).decode(),
                    }
                ).encode()
                + b"\n"
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.truncate(path, start)
    log = AuditLog(signing_key, path, every_n=1 << 30, every_s=1e12, clock=clock, on_head=on_head)
    log.append(
        {
            "event": "repair",
            "at": round(clock(), 6),
            "line": line,
            "cut_bytes": 0 if whole else len(torn),
            "sha256": digest,
            "prefix_b64": base64.b64encode(torn[:256]).decode(),
            "kept": whole,
        }
    )
    log.close()
    return Repair(line, 0 if whole else len(torn), digest, whole)
