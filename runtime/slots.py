"""A/B bundle slots under the robot root, one state file, and the runtime's lock.

::

    <root>/var/lib/edgeflux/slots/a/          a verified bundle (policy.onnx, edgeflux.json,
                                               model.sig)
    <root>/var/lib/edgeflux/slots/b/
    <root>/var/lib/edgeflux/state.json         SlotState, written atomically (runtime.atomicio)
    <root>/var/lib/edgeflux/antirollback.json  per-name counters (runtime.antirollback)
    <root>/run/edgeflux/runtime.lock           flock held by the running runtime

Lifecycle of an update: `stage` copies a bundle into the slot that is
not the last good one and verifies the copy; `mark_activated` records that the
runtime is about to switch to it with `boot_tries` start-up tries; `commit` makes it
the last good slot and only then advances the anti-rollback counter;
`rollback` returns to the last good slot. Every change is persisted *before* it is
acted on, so after a kill -9 at any point `boot` picks a slot that verifies: an
activated slot while it has tries left, else the last good one.

A missing, truncated or corrupt state file is not fatal: `boot` rebuilds the state
from what verifies on disk (preferring the bundle the anti-rollback store says was
committed) and writes a fresh file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protos.lifecycle import PendingState
from runtime.atomicio import atomic_write_json, fsync_dir
from runtime.bundle import BundleError, VerifiedBundle
from runtime.layout import RobotLayout

__all__ = [
    "SLOTS",
    "BootChoice",
    "NoBundleError",
    "RuntimeLock",
    "RuntimeLockedError",
    "SlotError",
    "SlotState",
    "SlotStore",
]

log = logging.getLogger(__name__)

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
STATE_SCHEMA = "edgeflux.slots/v1"

Verifier = Callable[[Path], VerifiedBundle]


class SlotError(RuntimeError):
    """A slot operation is not possible in the current state; the message says why."""


class NoBundleError(SlotError):
    """No slot holds a bundle that verifies: the robot has nothing safe to run."""


class RuntimeLockedError(SlotError):
    """Another runtime already runs on this robot root."""


def _other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


class SlotState(BaseModel):
    """What `state.json` records. Changed only through `SlotStore`."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["edgeflux.slots/v1"] = Field(default="edgeflux.slots/v1", alias="schema")
    active: Slot | None = None
    """The slot the runtime runs (after a switch: the pending one)."""
    last_good: Slot | None = None
    """The last committed slot: where a failure rolls back to."""
    pending: Slot | None = None
    pending_state: PendingState | None = None
    tries_left: int = Field(default=0, ge=0)
    """Start-up tries left for an activated, uncommitted slot."""
    last_failure: str = ""
    """Why the last candidate was rolled back or fell back at start-up ('' if none)."""
    generation: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class BootChoice:
    slot: Slot
    bundle: VerifiedBundle
    trial: bool
    """True when booting an activated but uncommitted slot (a start-up try)."""


class RuntimeLock:
    """An exclusive flock on `<root>/run/edgeflux/runtime.lock`, released by the kernel
    when the process dies (so a kill -9 never leaves a stale lock)."""

    def __init__(self, layout: RobotLayout) -> None:
        self.path = layout.run / "runtime.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeLockedError(
                f"another runtime (pid {holder}) is already running on robot root "
                f"{self.path.parents[2]} (lock {self.path}); stop it first, or use another --root"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RuntimeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SlotStore:
    """The slots and their state file; `verify` is `verify_bundle` bound to the robot's
    trust store, anti-rollback store and device profile."""

    def __init__(self, layout: RobotLayout, verify: Verifier, *, boot_tries: int = 3) -> None:
        if boot_tries < 1:
            raise ValueError(f"boot_tries must be >= 1, got {boot_tries}")
        self.layout = layout
        self.verify = verify
        self.boot_tries = boot_tries
        layout.slots.mkdir(parents=True, exist_ok=True)

    # ---- state file ----------------------------------------------------------------------

    def load(self) -> SlotState | None:
        """The state on disk, or None when missing or unreadable (logged with the reason)."""
        path = self.layout.slot_state
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return SlotState.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            log.error("slot state %s is corrupt (%s); rebuilding it from the slots", path, exc)
            return None

    def save(self, state: SlotState) -> SlotState:
        state = state.model_copy(update={"generation": state.generation + 1})
        atomic_write_json(self.layout.slot_state, state.model_dump(mode="json", by_alias=True))
        return state

    def state(self) -> SlotState:
        return self.load() or SlotState()

    # ---- boot ----------------------------------------------------------------------------

    def _try(self, slot: Slot) -> VerifiedBundle | str:
        path = self.layout.slot(slot)
        if not path.is_dir():
            return f"slot {slot} is empty"
        try:
            return self.verify(path)
        except BundleError as exc:
            return f"slot {slot} does not verify: {exc}"

    def boot(self) -> BootChoice:
        """Choose the slot to run at start-up, persisting the decision first."""
        state = self.load()
        if state is None:
            return self._rebuild(corrupt=self.layout.slot_state.exists())
        notes: list[str] = []
        if state.pending is not None and state.pending_state == PendingState.ACTIVATED:
            slot = state.pending
            if state.tries_left > 0:
                state = self.save(
                    state.model_copy(update={"tries_left": state.tries_left - 1, "active": slot})
                )
                got = self._try(slot)
                if isinstance(got, VerifiedBundle):
                    log.warning(
                        "booting uncommitted slot %s (%d start-up tries left)",
                        slot,
                        state.tries_left,
                    )
                    return BootChoice(slot, got, trial=True)
                notes.append(got)
            else:
                notes.append(f"slot {slot} used up its {self.boot_tries} start-up tries")
            state = self.save(
                state.model_copy(
                    update={
                        "pending": None,
                        "pending_state": None,
                        "tries_left": 0,
                        "active": state.last_good,
                        "last_failure": "; ".join(notes),
                    }
                )
            )
        order = [s for s in (state.last_good, state.active) if s is not None]
        for slot in order:
            got = self._try(slot)
            if isinstance(got, VerifiedBundle):
                if state.active != slot or state.last_good != slot:
                    self.save(state.model_copy(update={"active": slot, "last_good": slot}))
                return BootChoice(slot, got, trial=False)
            notes.append(got)
        if state.last_good is None and state.active is None:
            return self._rebuild(corrupt=False)
        raise NoBundleError(f"no bundle to run under {self.layout.slots}: " + "; ".join(notes))

    def _rebuild(self, *, corrupt: bool) -> BootChoice:
        """No usable state file: run what verifies, preferring the committed bundle.

        A robot whose slots were filled without a state file (a fresh install) starts
        clean; only a corrupt file is remembered as the last failure."""
        found: dict[Slot, VerifiedBundle] = {}
        notes = []
        for slot in SLOTS:
            got = self._try(slot)
            if isinstance(got, VerifiedBundle):
                found[slot] = got
            else:
                notes.append(got)
        if not found:
            raise NoBundleError(
                f"no bundle to run: {'; '.join(notes)}. Install one with "
                f"`edgeflux runtime run --root {self.layout.root} --bundle DIR`"
            )
        # verify() already rejected anything below its committed counter, so the
        # highest sequence left is the committed bundle or a newer one.
        slot = max(found, key=lambda s: (found[s].manifest.sequence, s == "a"))
        note = "the slot state file was corrupt; rebuilt it from the slots" if corrupt else ""
        self.save(SlotState(active=slot, last_good=slot, last_failure=note))
        return BootChoice(slot, found[slot], trial=False)

    # ---- updates -------------------------------------------------------------------------

    def install_first(self, bundle_dir: Path) -> BootChoice:
        """Put a first bundle into slot a as the last good one (an empty robot only)."""
        state = self.state()
        if state.last_good is not None:
            raise SlotError(
                f"{self.layout.root} already has a bundle in slot {state.last_good}; "
                "use stage/activate to update it"
            )
        verified = self._copy_in("a", bundle_dir)
        self.save(SlotState(active="a", last_good="a"))
        return BootChoice("a", verified, trial=False)

    def stage(self, bundle_dir: Path) -> tuple[Slot, VerifiedBundle]:
        """Copy `bundle_dir` into the slot that is not the last good one and verify the copy."""
        state = self.state()
        if state.pending_state == PendingState.ACTIVATED:
            raise SlotError(
                f"slot {state.pending} is activated but not committed; commit or roll back first"
            )
        if state.last_good is None:
            raise SlotError("no committed bundle yet; install a first one before staging updates")
        slot = _other(state.last_good)
        # Forget the old staged bundle before touching its files (persist before acting).
        state = self.save(state.model_copy(update={"pending": None, "pending_state": None}))
        verified = self._copy_in(slot, bundle_dir)
        self.save(state.model_copy(update={"pending": slot, "pending_state": PendingState.STAGED}))
        return slot, verified

    def _copy_in(self, slot: Slot, bundle_dir: Path) -> VerifiedBundle:
        src = Path(bundle_dir)
        if not src.is_dir():
            raise SlotError(f"{src}: not a bundle directory")
        dest = self.layout.slot(slot)
        tmp = self.layout.slots / f".{slot}.staging"
        old = self.layout.slots / f".{slot}.old"
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
        try:
            shutil.copytree(src, tmp, symlinks=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SlotError(f"cannot copy {src} into slot {slot}: {exc}") from exc
        for f in tmp.iterdir():
            if f.is_file() and not f.is_symlink():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        try:
            # What we will run is the copy, so the copy is verified — once: the rename
            # below moves those very files, so the result holds for `dest`.
            verified = self.verify(tmp)
        except BundleError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        fsync_dir(self.layout.slots)
        if old.exists():
            shutil.rmtree(old)
        return replace(verified, path=dest)

    def mark_activated(self) -> Slot:
        """Record the switch to the staged slot (before the loop switches)."""
        state = self.state()
        if state.pending is None or state.pending_state != PendingState.STAGED:
            raise SlotError("nothing is staged; stage a bundle first")
        self.save(
            state.model_copy(
                update={
                    "pending_state": PendingState.ACTIVATED,
                    "active": state.pending,
                    "tries_left": self.boot_tries,
                    "last_failure": "",
                }
            )
        )
        return state.pending

    def commit(
        self, verified: VerifiedBundle, commit_counter: Callable[[VerifiedBundle], None]
    ) -> VerifiedBundle:
        """Make the activated slot the last good one, then advance its anti-rollback counter.

        `verified` is what staging (or the start-up try) verified of that slot: the
        bytes the loop runs, so they are not verified again here."""
        state = self.state()
        if state.pending is None or state.pending_state != PendingState.ACTIVATED:
            raise SlotError("nothing to commit: no slot is activated")
        slot = state.pending
        if verified.path != self.layout.slot(slot):
            raise SlotError(f"refusing to commit: {verified.path} is not slot {slot}")
        got = verified
        self.save(
            state.model_copy(
                update={
                    "active": slot,
                    "last_good": slot,
                    "pending": None,
                    "pending_state": None,
                    "tries_left": 0,
                }
            )
        )
        # Only commit advances the counter; state first, so a kill here
        # leaves a committed slot whose counter the next commit or boot catches up.
        commit_counter(got)
        return got

    def rollback(self, reason: str) -> Slot:
        """Return to the last good slot; the pending one is forgotten (its files stay)."""
        state = self.state()
        if state.last_good is None:
            raise SlotError("no last good slot to roll back to")
        if state.pending is None:
            raise SlotError("nothing to roll back: no slot is staged or activated")
        self.save(
            state.model_copy(
                update={
                    "active": state.last_good,
                    "pending": None,
                    "pending_state": None,
                    "tries_left": 0,
                    "last_failure": reason,
                }
            )
        )
        return state.last_good
