"""The offline wheelhouse a robot installs from at first boot.

`build_wheelhouse` builds EdgeFlux's own wheel from the source tree and downloads
`edgeflux[<extras>]`'s dependencies as binary wheels for the *robot's* platform and
Python (`pip download --platform ... --only-binary=:all:`), so the robot needs no
network. Jetson users add NVIDIA's onnxruntime-gpu wheel with `extra_wheels`
(there are no PyPI wheels for Jetson; onnxruntime#20503) and choose the `gpu` extra.

`check_wheelhouse` refuses wheels that cannot install on the target (wrong
architecture or Python), before anything is written to the robot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["PLATFORMS", "WheelhouseError", "build_wheelhouse", "check_wheelhouse"]


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built, or holds wheels the robot cannot install."""


def _manylinux(arch: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(39, 16, -1)]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


# Our names for robot platforms -> the wheel platform tags pip may pick for them.
PLATFORMS: dict[str, list[str]] = {
    "linux_x86_64": _manylinux("x86_64"),
    "linux_aarch64": _manylinux("aarch64"),
}
MIN_PYTHON = (3, 11)

_WHEEL = re.compile(
    r"^(?P<name>[^-]+)-(?P<ver>[^-]+)(?:-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)"
    r"-(?P<plat>[^-]+)\.whl$"
)


def parse_python(version: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", version)
    if not m:
        raise WheelhouseError(f"--python {version!r}: expected MAJOR.MINOR, e.g. 3.11")
    parsed = (int(m.group(1)), int(m.group(2)))
    if parsed < MIN_PYTHON:
        raise WheelhouseError(
            f"--python {version}: EdgeFlux needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} on "
            "the robot (JetPack 6 ships 3.10: install a 3.11 interpreter on the robot first)"
        )
    return parsed


def _arch(platform: str) -> str:
    if platform not in PLATFORMS:
        raise WheelhouseError(
            f"--platform {platform!r} is not supported; choose one of {sorted(PLATFORMS)}"
        )
    return platform.removeprefix("linux_")


def wheel_fits(filename: str, platform: str, python: str) -> str | None:
    """None if `filename` installs on (platform, python); otherwise the reason it does not."""
    m = _WHEEL.match(filename)
    if not m:
        return "not a wheel file name"
    arch = _arch(platform)
    major, minor = parse_python(python)
    plats = m.group("plat").split(".")
    if not any(p == "any" or p.endswith(f"_{arch}") for p in plats):
        return f"built for {m.group('plat')}, the robot is {platform}"
    pys = m.group("py").split(".")
    abis = m.group("abi").split(".")

    def py_ok(tag: str) -> bool:
        if tag in ("py3", f"py{major}", f"py{major}{minor}"):
            return True
        cp = re.fullmatch(r"cp(\d)(\d+)", tag)
        if not cp:
            return False
        version = (int(cp.group(1)), int(cp.group(2)))
        # cp311-cp311 only on 3.11; cp38-abi3 on any CPython >= 3.8
        return version == (major, minor) or ("abi3" in abis and version <= (major, minor))

    if not any(py_ok(t) for t in pys):
        return f"built for Python {m.group('py')}, the robot has {python}"
    return None


def check_wheelhouse(directory: Path, platform: str, python: str) -> list[Path]:
    """Return the wheels in `directory`; raise if any cannot install on the robot."""
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        raise WheelhouseError(f"wheelhouse {directory} holds no wheels")
    bad = [(w.name, why) for w in wheels if (why := wheel_fits(w.name, platform, python))]
    if bad:
        lines = "\n  ".join(f"{name}: {why}" for name, why in bad)
        raise WheelhouseError(
            f"wheelhouse {directory} has wheels that will not install on {platform} / "
            f"Python {python}:\n  {lines}"
        )
    if not any(w.name.startswith("edgeflux-") for w in wheels):
        raise WheelhouseError(f"wheelhouse {directory} has no edgeflux wheel")
    return wheels


def _pip(args: Sequence[str], log: Callable[[str], None]) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(("Saved", "Collecting", "Successfully", "File was already")):
            log(line)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise WheelhouseError(f"`pip {args[0]}` failed (exit {proc.returncode}):\n{tail}")


def build_wheelhouse(
    out_dir: Path,
    *,
    source_dir: Path,
    platform: str,
    python: str,
    extras: str = "device",
    version: str,
    extra_wheels: Sequence[Path] = (),
    log: Callable[[str], None] = lambda line: None,
) -> list[Path]:
    """Fill `out_dir` with edgeflux's wheel and its dependencies for the robot.

    `out_dir` doubles as a cache: wheels already there are not downloaded again.
    """
    major, minor = parse_python(python)
    _arch(platform)
    if not (source_dir / "pyproject.toml").is_file():
        raise WheelhouseError(
            f"{source_dir} is not an EdgeFlux source tree (no pyproject.toml); pass "
            "--wheelhouse DIR with a prebuilt wheelhouse instead"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("edgeflux-*.whl"):
        old.unlink()
    for wheel in extra_wheels:
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise WheelhouseError(f"--extra-wheel {wheel}: not a .whl file")
        why = wheel_fits(wheel.name, platform, python)
        if why:
            raise WheelhouseError(f"--extra-wheel {wheel.name}: {why}")
        shutil.copy2(wheel, out_dir / wheel.name)
    log(f"building the edgeflux {version} wheel from {source_dir}")
    _pip(["wheel", "--no-deps", "--quiet", "-w", str(out_dir), str(source_dir)], log)
    platform_args = [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
    log(f"downloading dependencies of edgeflux[{extras}] for {platform} / CPython {python}")
    _pip(
        [
            "download",
            "--dest",
            str(out_dir),
            "--find-links",
            str(out_dir),
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            f"{major}.{minor}",
            "--abi",
            f"cp{major}{minor}",
            "--abi",
            "abi3",
            "--abi",
            "none",
            *platform_args,
            f"edgeflux[{extras}]=={version}",
        ],
        log,
    )
    return check_wheelhouse(out_dir, platform, python)
