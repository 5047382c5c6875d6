"""Flash a robot: lay out its filesystem (runtime, identity, trust anchors, first bundle,
configuration, systemd units, offline wheelhouse) on a directory, over SSH, or as an
image tarball, then read everything back and verify it on the target.

The composition root is `edgeflux flash` (edgeflux/flash.py); this package knows
nothing about the control plane: it takes the materials (identity, trust anchors,
bundle) as bytes and files.
"""

from edgeflux.provision._plan import FileEntry, FlashMaterials, FlashPlan, build_plan
from edgeflux.provision._units import REALTIME_DEFAULTS
from edgeflux.provision.errors import FlashError
from edgeflux.provision.flasher import FlashReport, flash
from edgeflux.provision.targets import DirTarget, ImageTarget, SshTarget, Target, parse_target
from edgeflux.provision.wheels import (
    PLATFORMS,
    WheelhouseError,
    build_wheelhouse,
    check_wheelhouse,
)

__all__ = [
    "PLATFORMS",
    "REALTIME_DEFAULTS",
    "DirTarget",
    "FileEntry",
    "FlashError",
    "FlashMaterials",
    "FlashPlan",
    "FlashReport",
    "ImageTarget",
    "SshTarget",
    "Target",
    "WheelhouseError",
    "build_plan",
    "build_wheelhouse",
    "check_wheelhouse",
    "flash",
    "parse_target",
]
