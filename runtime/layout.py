"""Where things live on a robot, relative to its filesystem root.

A real robot has root ``/``; simulated robots (the demo, tests) each get their own
directory as root, so many run side by side on one machine::

    <root>/etc/edgeflux/runtime.toml      runtime config
    <root>/etc/edgeflux/agent.toml        agent config
    <root>/etc/edgeflux/trust/            trust store (model keys, attestation keys, TUF root, CA)
    <root>/etc/edgeflux/identity/         device certificate and key (0600)
    <root>/var/lib/edgeflux/slots/a|b     A/B bundle slots
    <root>/var/lib/edgeflux/state.json    slot state (active, pending, tries, last good)
    <root>/var/lib/edgeflux/antirollback.json
    <root>/var/lib/edgeflux/agent/        agent state, spool, downloads
    <root>/var/lib/edgeflux/recordings/   flight recorder MCAP segments (runtime.recording)
    <root>/run/edgeflux/runtime.sock      RuntimeControl (gRPC over a unix socket)
    <root>/opt/edgeflux/                  installed runtime (venv, wheelhouse)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RobotLayout"]


@dataclass(frozen=True)
class RobotLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> RobotLayout:
        return cls(Path(root).resolve())

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "edgeflux"

    @property
    def runtime_config(self) -> Path:
        return self.etc / "runtime.toml"

    @property
    def agent_config(self) -> Path:
        return self.etc / "agent.toml"

    @property
    def trust(self) -> Path:
        return self.etc / "trust"

    @property
    def identity(self) -> Path:
        return self.etc / "identity"

    @property
    def var(self) -> Path:
        return self.root / "var" / "lib" / "edgeflux"

    @property
    def slots(self) -> Path:
        return self.var / "slots"

    def slot(self, name: str) -> Path:
        if name not in ("a", "b"):
            raise ValueError(f"slot must be 'a' or 'b', not {name!r}")
        return self.slots / name

    @property
    def slot_state(self) -> Path:
        return self.var / "state.json"

    @property
    def antirollback(self) -> Path:
        return self.var / "antirollback.json"

    @property
    def recordings(self) -> Path:
        return self.var / "recordings"

    @property
    def agent_state(self) -> Path:
        return self.var / "agent"

    @property
    def run(self) -> Path:
        return self.root / "run" / "edgeflux"

    @property
    def runtime_socket(self) -> Path:
        return self.run / "runtime.sock"

    @property
    def opt(self) -> Path:
        return self.root / "opt" / "edgeflux"

    def ensure(self) -> None:
        """Create the directories (not the files) of this layout."""
        for d in (self.etc, self.trust, self.identity, self.slots, self.agent_state, self.run):
            d.mkdir(parents=True, exist_ok=True)
        self.identity.chmod(0o700)
