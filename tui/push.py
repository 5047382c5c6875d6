"""What a bundle push will do, computed before anyone confirms it (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tui.query import QueryError, parse_query
from tui.rows import DeviceRow

__all__ = ["PushPlan", "plan_push", "selector_devices"]


@dataclass(frozen=True)
class PushPlan:
    """Exactly which robots move from which version to which."""

    bundle_name: str
    version: str
    sequence: int
    device_ids: tuple[str, ...]
    transitions: tuple[tuple[str, int], ...]  # ("pend 1.0.0 → 1.1.0", how many)
    already: int  # robots that already run this exact bundle
    downgrades: int  # robots on a higher sequence: anti-rollback will refuse them
    target: str  # "3 marked robots" or "selector site=lab"

    @property
    def count(self) -> int:
        return len(self.device_ids)

    def confirmation_ok(self, typed: str) -> bool:
        """One robot needs no typing; more need the count or the bundle name typed back."""
        if self.count == 0:
            return False
        if self.count == 1:
            return True
        typed = typed.strip()
        return typed in (str(self.count), self.bundle_name)

    def describe(self) -> list[str]:
        noun = "robot" if self.count == 1 else "robots"
        lines = [
            f"Push {self.bundle_name} {self.version} (sequence {self.sequence}) "
            f"to {self.count} {noun} ({self.target}):"
        ]
        lines += [f"  {n} × {what}" for what, n in self.transitions]
        if self.already:
            lines.append(f"  {self.already} already run {self.bundle_name} {self.version}")
        if self.downgrades:
            lines.append(
                f"  ⚠ {self.downgrades} on a newer sequence: their anti-rollback will refuse it"
            )
        return lines


def selector_devices(rows: list[DeviceRow], selector: str) -> list[DeviceRow]:
    """Devices matching a label selector (``site=lab,role=arm``; all must match)."""
    terms = [t for t in selector.replace(",", " ").split() if t]
    if not terms:
        raise QueryError("empty selector: give at least one label=value")
    for t in terms:
        if "=" not in t:
            raise QueryError(f"selector term {t!r} is not label=value")
    query = parse_query(" ".join(terms))
    return [r for r in rows if query.matches(r)]


def plan_push(
    bundle_name: str, version: str, sequence: int, devices: list[DeviceRow], target: str
) -> PushPlan:
    moves: Counter[str] = Counter()
    already = downgrades = 0
    for d in devices:
        if d.bundle_name == bundle_name and d.bundle_version == version:
            already += 1
            continue
        if d.bundle_name == bundle_name and d.bundle_sequence > sequence:
            downgrades += 1
        current = f"{d.bundle_name} {d.bundle_version}" if d.bundle_name else "(no bundle)"
        moves[f"{current} → {bundle_name} {version}"] += 1
    return PushPlan(
        bundle_name,
        version,
        sequence,
        tuple(d.id for d in devices),
        tuple(sorted(moves.items(), key=lambda kv: (-kv[1], kv[0]))),
        already,
        downgrades,
        target,
    )
