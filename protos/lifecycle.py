"""The update lifecycle's one vocabulary: states, outcomes and reason codes.

Every layer speaks these words — the runtime's control socket, the agent's state
machine and its events, the plane's store and rollout engine, the CLI and the TUI —
so they live here, in the one package all of them may import. On every wire they are
plain strings (``RuntimeStatus.state``, ``Event.state`` / ``Event.reason_code``, the
store's columns, the admin API), and each enum is a ``StrEnum``: a member *is* its
string.

An update on the robot goes through these steps; the state a record holds names the
step in progress, so a process killed mid-step finds on disk what it was doing::

    IDLE → REFRESHING → DOWNLOADING → STAGING → ATTESTING → SHADOWING
         [→ HELD] → SWITCHING → HEALTH_WINDOW → COMMITTING → COMMITTED
    (any step) → FAILED(reason)         before anything was actuated
    SWITCHING … COMMITTING → ROLLED_BACK(reason)

A failure is a :class:`Failure`: a :class:`Reason` code a program can act on plus a
detail a person can read. Both travel intact from where the failure happened to
``rollout get``, ``cloud devices`` and the TUI.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "FAILURE_OUTCOMES",
    "REASON_METADATA_KEY",
    "Failure",
    "Outcome",
    "PendingState",
    "Reason",
    "RuntimeState",
    "UpdateState",
]


class UpdateState(enum.StrEnum):
    """An update on the robot, as the agent persists and reports it."""

    IDLE = "IDLE"
    """No update in progress (also: the last one ended long ago)."""
    REFRESHING = "REFRESHING"
    """Refreshing TUF metadata and checking the signed desired state against it."""
    DOWNLOADING = "DOWNLOADING"
    """Downloading the TUF target (length and hash checked by TUF)."""
    STAGING = "STAGING"
    """Unpacking; the runtime verifies the bundle (once), copies it into the inactive
    slot, loads and warms it. Nothing is actuated."""
    ATTESTING = "ATTESTING"
    """Checking the parity attestation against the digests the runtime verified."""
    SHADOWING = "SHADOWING"
    """The candidate runs beside the active policy; its actions are not applied."""
    HELD = "HELD"
    """The candidate is staged and shadowed; the switch waits for the robot's update
    locks to be released (``UPDATE_LOCKED``) or for its maintenance window to open
    (``OUTSIDE_WINDOW``). Only entered while something holds. Nothing is actuated."""
    SWITCHING = "SWITCHING"
    """The runtime switches to the candidate on a tick where the robot allows it."""
    HEALTH_WINDOW = "HEALTH_WINDOW"
    """The candidate drives the robot; the runtime judges its health."""
    COMMITTING = "COMMITTING"
    """Making the candidate the last good slot and advancing the anti-rollback counter."""
    COMMITTED = "COMMITTED"
    """The update is done: the candidate is the committed bundle."""
    FAILED = "FAILED"
    """The update stopped before anything was actuated; the old bundle never stopped."""
    ROLLED_BACK = "ROLLED_BACK"
    """The candidate drove the robot and was reverted to the last good bundle."""


ENDED_STATES = frozenset({UpdateState.COMMITTED, UpdateState.FAILED, UpdateState.ROLLED_BACK})
"""An update's last word. The plane keeps it (with its reason) on the device until the
robot's next update event: a telemetry sample taken before it, or an idle agent's, never
replaces it."""


class RuntimeState(enum.StrEnum):
    """The runtime's state, as ``RuntimeStatus.state`` reports it."""

    STOPPED = "stopped"
    RUNNING = "running"
    """Running the committed bundle; nothing pending."""
    STAGED = "staged"
    """A verified, warmed candidate waits in the inactive slot."""
    SHADOWING = "shadowing"
    ACTIVATED = "activated"
    """Running a candidate that is not committed yet (commit or roll back)."""
    HEALTH_WINDOW = "health_window"
    ROLLED_BACK = "rolled_back"
    """Back on the last good bundle after a failed or refused candidate."""


class PendingState(enum.StrEnum):
    """What the slot state file records about the pending slot."""

    STAGED = "staged"
    ACTIVATED = "activated"


class Outcome(enum.StrEnum):
    """A device's terminal outcome in a rollout wave."""

    COMMITTED = UpdateState.COMMITTED.value
    FAILED = UpdateState.FAILED.value
    ROLLED_BACK = UpdateState.ROLLED_BACK.value
    SILENT = "SILENT"
    """No outcome reached the plane before the wave's deadline."""


FAILURE_OUTCOMES = frozenset({Outcome.FAILED, Outcome.ROLLED_BACK, Outcome.SILENT})


class Reason(enum.StrEnum):
    """Why a step ended the way it did (``OK`` for a step that succeeded)."""

    OK = "OK"
    # refresh and desired state
    HINT_IGNORED = "HINT_IGNORED"
    TUF_REFRESH_FAILED = "TUF_REFRESH_FAILED"
    TARGET_UNKNOWN = "TARGET_UNKNOWN"
    NOT_NEWER = "NOT_NEWER"
    DESIRED_STATE_INVALID = "DESIRED_STATE_INVALID"
    PLANE_UNREACHABLE = "PLANE_UNREACHABLE"
    """Neither the plane's gRPC endpoint nor the MQTT fallback answered (transient)."""
    DESIRED_STATE_MISMATCH = "DESIRED_STATE_MISMATCH"
    # download, staging, attestation
    DISK_FULL = "DISK_FULL"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    BUNDLE_INVALID = "BUNDLE_INVALID"
    """The bundle does not verify (signature, digests, manifest, counters, device)."""
    POLICY_LOAD_FAILED = "POLICY_LOAD_FAILED"
    """The verified policy cannot be loaded on this robot (providers, shapes)."""
    STAGE_FAILED = "STAGE_FAILED"
    ATTESTATION_INVALID = "ATTESTATION_INVALID"
    # shadow
    SHADOW_FAILED = "SHADOW_FAILED"
    SHADOW_DIVERGENCE = "SHADOW_DIVERGENCE"
    SHADOW_NAN = "SHADOW_NAN"
    SHADOW_LATENCY = "SHADOW_LATENCY"
    SHADOW_ENVELOPE = "SHADOW_ENVELOPE"
    # waiting before the switch (state HELD; the detail says who holds, or when it opens)
    UPDATE_LOCKED = "UPDATE_LOCKED"
    """A lock on the robot holds the switch (its holder and reason in the detail)."""
    OUTSIDE_WINDOW = "OUTSIDE_WINDOW"
    """The maintenance window is closed (its next opening in the detail)."""
    # switch, health, commit
    UNSAFE_TO_SWITCH = "UNSAFE_TO_SWITCH"
    """The robot never allowed a switch within the time-out."""
    ACTIVATE_FAILED = "ACTIVATE_FAILED"
    HEALTH_WINDOW_FAILED = "HEALTH_WINDOW_FAILED"
    """The runtime judged the candidate unhealthy (fallbacks, deadline misses, stalls)."""
    HEALTH_CRASH = "HEALTH_CRASH"
    """The control loop or the update step crashed while the candidate was active."""
    COMMIT_FAILED = "COMMIT_FAILED"
    # the process and the socket
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    AGENT_RESTARTED = "AGENT_RESTARTED"
    BOOT_FALLBACK = "BOOT_FALLBACK"
    """At start-up the runtime could not run an uncommitted slot and fell back."""
    WRONG_STATE = "WRONG_STATE"
    """The runtime was asked for a step that does not fit its state."""
    ROLLBACK_REQUESTED = "ROLLBACK_REQUESTED"
    RUNTIME_UNAVAILABLE = "RUNTIME_UNAVAILABLE"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    """An unexpected error inside the runtime (its log has the traceback)."""

    @classmethod
    def parse(cls, text: str, default: Reason) -> Reason:
        """The member named `text`, or `default` for an empty or unknown code."""
        try:
            return cls(text)
        except ValueError:
            return default


#: gRPC trailing-metadata key that carries a :class:`Reason` code with an error status.
REASON_METADATA_KEY = "edgeflux-reason"


@dataclass(frozen=True)
class Failure:
    """A failure as it crosses every boundary: a code and a readable detail."""

    code: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}" if self.detail else self.code.value
