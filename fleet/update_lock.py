"""Device-side update locks: the robot's own software holds the switch to a new bundle.

An integrator's process (a task executive mid-task, a dock manager while undocked, a
battery monitor) holds updates by writing one small JSON file per holder into
``<agent state>/locks/``::

    <agent state>/locks/<who>.json
    {"who": "nav", "reason": "mid-task", "expires_at": "2026-12-07T15:10:00Z"}

``who`` is the holder's name (letters, digits, ``.``, ``_``, ``-``; the file is named
after it; it may be left out), ``reason`` a line for people (at most 200 characters),
``expires_at`` an RFC 3339 time with a zone, at most 7 days ahead. Write the file
atomically (a temporary file named with a leading dot in the same directory, then
rename) — or run ``edgeflux agent lock``, which does exactly that. Deleting the file
releases the lock; so does its expiry: an expired lock is no lock.

While any lock holds, the agent still downloads, verifies, stages and shadows an
update; it then waits before the switch (``HELD``, reason ``UPDATE_LOCKED``) and
switches within a poll interval of the last lock going away.

A lock file the agent cannot read (not JSON, a field missing or of the wrong type, an
expiry too far ahead or without a zone, too large, not a regular file) **holds**, and
is reported with its file and field: the writer meant to hold the robot and the robot
cannot tell for how long, and switching under a task that asked not to be disturbed is
the worse mistake. It holds for at most :data:`INVALID_LOCK_HOLD_S` after the file was
last modified, so a broken file left behind cannot block updates for good.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.atomicio import atomic_write_text

__all__ = [
    "INVALID_LOCK_HOLD_S",
    "LOCK_DIR",
    "MAX_TTL_S",
    "LockError",
    "LockProblem",
    "LockState",
    "UpdateLock",
    "UpdateLocks",
]

#: The lock directory's name under the agent's state directory.
LOCK_DIR = "locks"
MAX_TTL_S = 7 * 24 * 3600.0
#: How long an unreadable lock file holds, counted from its last modification.
INVALID_LOCK_HOLD_S = 3600.0
MAX_LOCK_BYTES = 4096
MAX_REASON = 200
_WHO = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


class LockError(ValueError):
    """A lock that cannot be taken or released; the message says which field and why."""


@dataclass(frozen=True)
class UpdateLock:
    """One valid, unexpired lock."""

    who: str
    reason: str
    expires_at: dt.datetime
    path: Path

    def describe(self) -> str:
        until = self.expires_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        return f"locked by {self.who}: {self.reason} (until {until.replace('+00:00', 'Z')})"


@dataclass(frozen=True)
class LockProblem:
    """A lock file that is not a valid lock; it holds until `holds_until` (epoch s)."""

    path: Path
    field: str
    message: str
    holds_until: float

    def describe(self) -> str:
        return f"lock file {self.path} is invalid ({self.field}: {self.message}); holding"


@dataclass(frozen=True)
class LockState:
    """What holds the robot now: valid locks and invalid lock files still in force."""

    locks: tuple[UpdateLock, ...] = ()
    problems: tuple[LockProblem, ...] = ()

    @property
    def held(self) -> bool:
        return bool(self.locks or self.problems)

    def describe(self) -> str:
        return "; ".join(
            [lk.describe() for lk in self.locks] + [p.describe() for p in self.problems]
        )

    def until(self) -> float | None:
        """The epoch second at which every current hold has expired (None: not held)."""
        ends = [lk.expires_at.timestamp() for lk in self.locks] + [
            p.holds_until for p in self.problems
        ]
        return max(ends) if ends else None


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_who(who: str) -> str:
    if not _WHO.match(who):
        raise LockError(
            f"who: {who[:70]!r} is not a holder name (1-64 letters, digits, '.', '_', '-', "
            "not starting with '.' or '-')"
        )
    return who


class UpdateLocks:
    """The lock directory: read the locks in force, take and release one."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock

    def path_for(self, who: str) -> Path:
        return self.directory / f"{check_who(who)}.json"

    # ---- writing (the CLI, or any integrator that prefers this module)

    def acquire(self, who: str, reason: str, ttl_s: float) -> UpdateLock:
        """Take (or renew) `who`'s lock for `ttl_s` seconds; atomic."""
        path = self.path_for(who)
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON or "\n" in reason:
            raise LockError(f"reason: give one line of 1-{MAX_REASON} characters")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise LockError(f"ttl: {ttl_s:g} s is not between 0 and {MAX_TTL_S:.0f} s (7 days)")
        expires = dt.datetime.fromtimestamp(self.clock() + ttl_s, dt.UTC).replace(microsecond=0)
        body = {"who": who, "reason": reason, "expires_at": _rfc3339(expires)}
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(body, sort_keys=True) + "\n")
        return UpdateLock(who, reason, expires, path)

    def release(self, who: str) -> bool:
        """Remove `who`'s lock; False if there was none."""
        try:
            self.path_for(who).unlink()
        except FileNotFoundError:
            return False
        return True

    def release_all(self) -> list[str]:
        """Remove every lock file (valid or not); the names removed."""
        removed = []
        for entry in self._entries():
            try:
                entry.unlink()
                removed.append(entry.stem)
            except FileNotFoundError:
                pass
        return removed

    # ---- reading (the agent)

    def _entries(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        # Dot files are writers' temporaries, not yet locks.
        return [self.directory / n for n in names if n.endswith(".json") and not n.startswith(".")]

    def read(self) -> LockState:
        """The locks in force now; expired ones are ignored, invalid files reported."""
        now = self.clock()
        locks: list[UpdateLock] = []
        problems: list[LockProblem] = []
        for path in self._entries():
            result = self._read_one(path, now)
            if isinstance(result, UpdateLock):
                if result.expires_at.timestamp() > now:
                    locks.append(result)
            elif result is not None and result.holds_until > now:
                problems.append(result)
        return LockState(tuple(locks), tuple(problems))

    def _read_one(self, path: Path, now: float) -> UpdateLock | LockProblem | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None  # released while we listed
        holds_until = st.st_mtime + INVALID_LOCK_HOLD_S

        def bad(field: str, message: str) -> LockProblem:
            return LockProblem(path, field, message, holds_until)

        if not stat.S_ISREG(st.st_mode):
            return bad("file", "not a regular file")
        if st.st_size > MAX_LOCK_BYTES:
            return bad("file", f"{st.st_size} bytes, at most {MAX_LOCK_BYTES}")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return bad("file", f"cannot be read: {exc.strerror}")
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return bad("document", f"not JSON ({exc})"[:200])
        if not isinstance(obj, dict):
            return bad("document", "not a JSON object")
        who = obj.get("who", path.stem)
        if not isinstance(who, str) or not _WHO.match(who):
            return bad("who", "expected a holder name (letters, digits, '.', '_', '-')")
        if who != path.stem:
            return bad("who", f"{who!r} does not match the file name {path.name!r}")
        reason = obj.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            return bad("reason", f"expected a string of 1-{MAX_REASON} characters")
        text = obj.get("expires_at")
        if not isinstance(text, str):
            return bad("expires_at", "expected an RFC 3339 time such as 2026-12-07T15:10:00Z")
        try:
            expires = dt.datetime.fromisoformat(text)
        except ValueError:
            return bad("expires_at", f"{text[:40]!r} is not an RFC 3339 time")
        if expires.tzinfo is None:
            return bad("expires_at", f"{text[:40]!r} has no time zone")
        if expires.timestamp() > now + MAX_TTL_S:
            return bad("expires_at", f"{text[:40]!r} is more than 7 days ahead")
        return UpdateLock(who, " ".join(reason.split()), expires, path)
