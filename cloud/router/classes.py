"""Who may use which task class, and how large a task of each class may be.

SAFETY tasks skip the work-unit and soft budget limits and may spend the safety
allowance, so claiming the class is a privilege: operators grant it in the `[router]`
table, and the plane checks every `Route` against the grant before the router sees it::

    [router]
    class_grants = {SAFETY = ["label:role=arm", "device:robot-7"]}
    max_payload_bytes = {SAFETY = 65536, INTERACTIVE = 262144, BATCH = 1048576}

A grant is a list of selectors: ``device:<id>`` (one device), ``label:<key>=<value>``
(devices carrying that label) or ``*`` (every device). A class with a grant list is
open only to the devices it selects (an empty list: to none); a class without one is
open to every device, except SAFETY: unless listed it is granted to nobody. The selector that let a
task through is written into its audit record; a refused claim is audited too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cloud.router.errors import RouterConfigError
from cloud.router.task import Qos

__all__ = ["DEFAULT_MAX_PAYLOAD", "OPEN", "ClassPolicy", "Selector", "parse_selector"]

OPEN = "open"
"""The grant of a class that no list restricts."""

DEFAULT_MAX_PAYLOAD: Mapping[Qos, int] = {
    Qos.SAFETY: 64 * 1024,
    Qos.INTERACTIVE: 256 * 1024,
    Qos.BATCH: 1024 * 1024,
}


@dataclass(frozen=True)
class Selector:
    text: str
    device: str | None = None
    label: tuple[str, str] | None = None

    def matches(self, device: str, labels: Mapping[str, str]) -> bool:
        if self.device is not None:
            return device == self.device
        if self.label is not None:
            key, value = self.label
            return labels.get(key) == value
        return True  # "*"


def parse_selector(text: str, where: str) -> Selector:
    """``device:<id>``, ``label:<key>=<value>`` or ``*``; anything else is refused."""
    if text == "*":
        return Selector(text)
    kind, sep, rest = text.partition(":")
    if sep and kind == "device" and rest:
        return Selector(text, device=rest)
    if sep and kind == "label":
        key, eq, value = rest.partition("=")
        if eq and key and value:
            return Selector(text, label=(key, value))
    raise RouterConfigError(
        f"{where}: selector {text!r}; expected 'device:<id>', 'label:<key>=<value>' or '*'"
    )


def _default_grants() -> dict[Qos, tuple[Selector, ...]]:
    return {Qos.SAFETY: ()}


@dataclass(frozen=True)
class ClassPolicy:
    grants: Mapping[Qos, tuple[Selector, ...]] = field(default_factory=_default_grants)
    max_payload: Mapping[Qos, int] = field(default_factory=lambda: dict(DEFAULT_MAX_PAYLOAD))

    @classmethod
    def from_settings(
        cls, grants: Mapping[Qos, list[str]], max_payload: Mapping[Qos, int]
    ) -> ClassPolicy:
        parsed = {
            q: tuple(parse_selector(s, f"[router] class_grants.{q.name}") for s in sel)
            for q, sel in grants.items()
        }
        # SAFETY bypasses limits: never open just because a table left it out.
        parsed.setdefault(Qos.SAFETY, ())
        sizes = {**DEFAULT_MAX_PAYLOAD}
        for q, n in max_payload.items():
            if not (isinstance(n, int) and 0 <= n <= 64 * 1024 * 1024):
                raise RouterConfigError(
                    f"[router] max_payload_bytes.{q.name} = {n!r}; expected 0 ≤ n ≤ 67108864"
                )
            sizes[q] = n
        return cls(parsed, sizes)

    def grant(self, qos: Qos, device: str, labels: Mapping[str, str]) -> str | None:
        """The selector that lets `device` use `qos` (OPEN if unrestricted); None: denied."""
        selectors = self.grants.get(qos)
        if selectors is None:
            return OPEN
        for s in selectors:
            if s.matches(device, labels):
                return s.text
        return None

    def payload_error(self, qos: Qos, size: int) -> str:
        """Why a payload of `size` bytes is too large for `qos` ("" if it fits)."""
        limit = self.max_payload.get(qos, DEFAULT_MAX_PAYLOAD[qos])
        if size > limit:
            return f"task.payload has {size} bytes; at most {limit} for class {qos.name}"
        return ""
