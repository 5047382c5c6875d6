"""World-model families by name: the built-in ones and any another package declares.

A package registers a family by naming an object (or a zero-argument factory that
returns one) in its ``pyproject.toml``::

    [project.entry-points."edgeflux.world_models"]
    my-family = "my_package.wm:FAMILY"

`register_family` does the same within one process (notebooks, tests).
"""

from __future__ import annotations

import importlib
import importlib.metadata

from distill.errors import UnknownFamilyError
from distill.wm_interface import WorldModelFamily

__all__ = ["ENTRY_POINT_GROUP", "family_names", "load_family", "register_family"]

ENTRY_POINT_GROUP = "edgeflux.world_models"
# Also declared as entry points in pyproject.toml; listed here so a source tree that
# was never installed still knows them.
BUILTIN_FAMILIES = {
    "tdmpc2": "distill.world_model:TDMPC2_FAMILY",
    "dreamerv3": "distill.dreamer:DREAMER_FAMILY",
}
_registered: dict[str, WorldModelFamily] = {}


def _targets() -> dict[str, str]:
    found = dict(BUILTIN_FAMILIES)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def family_names() -> list[str]:
    return sorted({*_targets(), *_registered})


def register_family(family: WorldModelFamily) -> None:
    """Make `family` available under `family.name` in this process."""
    if not isinstance(family, WorldModelFamily):
        raise UnknownFamilyError(
            f"{family!r} is not a world-model family (needs name, default_config, build)"
        )
    _registered[family.name] = family


def load_family(name: str) -> WorldModelFamily:
    """The family registered as `name`; a one-line `UnknownFamilyError` otherwise."""
    if name in _registered:
        return _registered[name]
    targets = _targets()
    target = targets.get(name)
    if target is None:
        raise UnknownFamilyError(
            f"no world-model family named {name!r}; known: {', '.join(family_names())} "
            f"(add one through the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownFamilyError(
            f"world-model family {name!r} ({target}) could not be imported: {exc}"
        ) from exc
    # A class or a factory function is called once; an instance is used as it is.
    factory = isinstance(obj, type) or (callable(obj) and not isinstance(obj, WorldModelFamily))
    family = obj() if factory else obj
    if not isinstance(family, WorldModelFamily):
        raise UnknownFamilyError(
            f"world-model family {name!r} ({target}) lacks name, default_config or build"
        )
    if family.name != name:
        raise UnknownFamilyError(
            f"entry point {name!r} ({target}) gives a family named {family.name!r}"
        )
    return family
