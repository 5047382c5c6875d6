"""Which `edgeflux[...]` extras a robot installs: derived from its adapter, or checked.

A robot needs exactly one onnxruntime build (`device` for CPU, `gpu` for CUDA; the two
share an import name and must never be installed together) plus whatever its robot
I/O adapter imports (the `gym` adapter drives a gymnasium environment: `sim`). The
result is canonical (sorted, no repeats), so the installer's stamp and the wheel cache
name the same set the same way however it was typed.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ADAPTER_EXTRAS", "ROBOT_EXTRAS", "ExtrasError", "robot_extras"]

ROBOT_EXTRAS: frozenset[str] = frozenset({"device", "gpu", "sim"})
"""The extras that make sense on a robot (the others pull torch, textual or sqlalchemy)."""

ADAPTER_EXTRAS: Mapping[str, frozenset[str]] = {"gym": frozenset({"sim"})}
"""What each built-in adapter imports beyond the core; adapters not listed need nothing."""


class ExtrasError(ValueError):
    """The requested extras do not fit the robot (nothing was written)."""


def robot_extras(adapter: str, requested: str | None) -> str:
    """The extras to install for `adapter`: `requested` checked, or the default."""
    needed = ADAPTER_EXTRAS.get(adapter, frozenset())
    if requested is None:
        return ",".join(sorted({"device", *needed}))
    chosen = {e.strip() for e in requested.split(",") if e.strip()}
    if not chosen:
        raise ExtrasError("--extras is empty; give e.g. --extras device")
    unknown = chosen - ROBOT_EXTRAS
    if unknown:
        raise ExtrasError(
            f"--extras {requested}: {', '.join(sorted(unknown))} is not a robot extra; "
            f"choose from {', '.join(sorted(ROBOT_EXTRAS))}"
        )
    if {"device", "gpu"} <= chosen:
        raise ExtrasError(
            f"--extras {requested}: device (onnxruntime) and gpu (onnxruntime-gpu) cannot be "
            "installed together; choose one"
        )
    if not chosen & {"device", "gpu"}:
        raise ExtrasError(
            f"--extras {requested} installs no onnxruntime, which the runtime needs; "
            f"add device (CPU) or gpu (CUDA): --extras {','.join(sorted(chosen | {'device'}))}"
        )
    missing = needed - chosen
    if missing:
        fixed = ",".join(sorted(chosen | missing))
        raise ExtrasError(
            f"the {adapter} adapter needs {', '.join(sorted(missing))} "
            f"({'gymnasium' if 'sim' in missing else 'its packages'}), which --extras "
            f"{requested} does not install; use --extras {fixed} or another --adapter"
        )
    return ",".join(sorted(chosen))
