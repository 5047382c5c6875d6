"""Does a bundle fit this device? Runtime version, opset, execution providers, hardware."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field

from runtime.bundle.errors import BundleCompatibilityError
from runtime.manifest import BundleManifest

__all__ = ["DeviceProfile", "check_compatibility", "version_tuple"]

# Highest ai.onnx opset each onnxruntime minor release implements (from the ORT
# release notes / "ONNX Runtime compatibility" table). Unknown newer releases get
# the last entry: under-claiming only refuses a bundle, it never runs a bad one.
_ORT_MAX_OPSET = ((1, 14, 18), (1, 15, 19), (1, 17, 20), (1, 18, 21), (1, 21, 22), (1, 23, 23))
_CONSERVATIVE_OPSET = 17

# Semver ("1.2.3-rc.1+build") and PEP 440 ("1.2.3.dev4", "1.2rc1", "1.2.3+local") alike:
# the numeric release, then anything that marks a pre-release.
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(.*)$")
_PRE = re.compile(r"^(?:[-.]?(?:a|alpha|b|beta|c|rc|pre|preview|dev)\.?\d*|-[0-9A-Za-z.-]+)")


def version_tuple(version: str) -> tuple[int, int, int, int]:
    """(major, minor, patch, 0 if pre-release else 1): pre-releases sort below the release."""
    m = _VERSION.match(version.strip())
    if not m:
        raise ValueError(f"{version!r} is not a MAJOR.MINOR.PATCH version")
    rest = m[4].split("+", 1)[0]
    if rest and not _PRE.match(rest) and not rest.startswith(".post"):
        raise ValueError(f"{version!r} is not a MAJOR.MINOR.PATCH version")
    pre = bool(rest) and not rest.startswith(".post")
    return int(m[1]), int(m[2]), int(m[3] or 0), 0 if pre else 1


def _arch_tags() -> list[str]:
    machine = platform.machine().lower()
    arch = {"aarch64": "arm64", "amd64": "x86_64", "x64": "x86_64"}.get(machine, machine)
    return [arch, platform.system().lower()]


def _max_opset_for(ort_version: str) -> int:
    try:
        major, minor, *_ = (int(p) for p in ort_version.split(".")[:2])
    except ValueError:
        return _CONSERVATIVE_OPSET
    best = _CONSERVATIVE_OPSET
    for ma, mi, opset in _ORT_MAX_OPSET:
        if (major, minor) >= (ma, mi):
            best = opset
    return best


@dataclass(frozen=True)
class DeviceProfile:
    """What this device can run. Built at flash time or by `DeviceProfile.local()`."""

    runtime_version: str
    execution_providers: list[str]
    hardware_tags: list[str]
    max_opset: int
    allowed_custom_ops: list[str] = field(default_factory=list)
    """Custom-domain operators this runtime implements, as "domain:OpType" or "domain:*"."""

    @classmethod
    def local(cls) -> DeviceProfile:
        """This machine: installed EdgeFlux version, onnxruntime providers, CPU architecture."""
        from importlib import metadata

        try:
            runtime_version = metadata.version("edgeflux")
        except metadata.PackageNotFoundError:
            runtime_version = "0.0.0"
        try:
            from runtime.session import available_providers

            providers = available_providers()
            ort_version = metadata.version("onnxruntime")
        except (ImportError, metadata.PackageNotFoundError):
            providers, ort_version = ["CPUExecutionProvider"], ""
        return cls(
            runtime_version=runtime_version,
            execution_providers=providers,
            hardware_tags=_arch_tags(),
            max_opset=_max_opset_for(ort_version),
        )


def check_compatibility(manifest: BundleManifest, device: DeviceProfile, where: str) -> None:
    """Raise BundleCompatibilityError naming the first requirement the device misses."""
    compat = manifest.compatibility
    try:
        needed = version_tuple(compat.min_runtime_version)
    except ValueError as exc:
        raise BundleCompatibilityError(f"{where}: compatibility.min_runtime_version {exc}") from exc
    try:
        have = version_tuple(device.runtime_version)
    except ValueError as exc:
        raise BundleCompatibilityError(f"{where}: this device's runtime version {exc}") from exc
    if have < needed:
        raise BundleCompatibilityError(
            f"{where}: needs runtime >= {compat.min_runtime_version}, "
            f"this device runs {device.runtime_version}; update the runtime first"
        )
    if compat.opset > device.max_opset:
        raise BundleCompatibilityError(
            f"{where}: uses ONNX opset {compat.opset}, this device's runtime supports "
            f"up to {device.max_opset}; re-export the policy at opset <= {device.max_opset}"
        )
    if not set(compat.execution_providers) & set(device.execution_providers):
        raise BundleCompatibilityError(
            f"{where}: allows execution providers {compat.execution_providers}, "
            f"this device has {device.execution_providers}"
        )
    missing = sorted(set(compat.hardware_tags) - set(device.hardware_tags))
    if missing:
        raise BundleCompatibilityError(
            f"{where}: requires hardware tags {missing} that this device lacks "
            f"(device tags: {sorted(device.hardware_tags)})"
        )
