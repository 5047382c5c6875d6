"""Import contracts (docs/architecture.md, "Layers"), checked in fresh interpreters."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["runtime", "fleet", "distill", "cloud", "tui", "protos", "edgeflux"]
FORBIDDEN_ON_ROBOT = ["torch", "textual", "sqlalchemy", "cloud", "distill", "tui"]


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/"
    )
    return out.stdout


def _robot_modules() -> list[str]:
    mods = []
    for pkg in ("runtime", "fleet"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods.append(".".join(parts))
    return mods


def test_robot_packages_load_no_torch_textual_or_sqlalchemy() -> None:
    mods = _robot_modules()
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN_ON_ROBOT!r} if m in sys.modules)))\n"
    )
    loaded = json.loads(_run(code))
    assert loaded == [], f"robot-side modules pulled in {loaded}"


@pytest.mark.parametrize("package", PACKAGES)
def test_top_level_package_resolves_to_this_distribution(package: str) -> None:
    path = _run(f"import {package}; print({package}.__file__)").strip()
    assert Path(path).resolve().parent == (REPO / package).resolve(), (
        f"`import {package}` resolved to {path}, not this repository's {package}/"
    )


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# Which first-party packages each package may import.
ALLOWED = {
    "protos": {"protos"},
    "runtime": {"runtime", "protos"},
    "fleet": {"fleet", "runtime", "protos"},
    "distill": {"distill", "runtime"},
    "cloud": {"cloud", "runtime", "protos", "distill"},
    "tui": {"tui", "protos"},
    "edgeflux": set(PACKAGES),
}

# One module owns each outside library.
OWNERS = {
    "paho": {"fleet/mqtt.py", "cloud/mqtt.py"},  # one owner per side: cloud may not import fleet
    "onnxruntime": {"runtime/session.py"},
    "sqlalchemy": {"cloud/store"},
}


# The operator's tools that prepare a robot never load the inference engine.
OPERATOR_TOOLS = ["edgeflux.provision", "edgeflux.flash", "edgeflux.bundle"]


def test_flashing_and_bundle_authoring_load_no_onnxruntime() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {OPERATOR_TOOLS!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in ('onnxruntime', 'torch', 'sqlalchemy')"
        " if m in sys.modules)))\n"
    )
    loaded = json.loads(_run(code))
    assert loaded == [], f"operator tools pulled in {loaded}"


def test_packages_import_only_what_the_design_allows() -> None:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in (REPO / package).rglob("*.py"):
            used = _imports(path) & set(PACKAGES)
            for name in sorted(used - allowed):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_each_outside_library_has_one_owner() -> None:
    bad = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            for lib in _imports(path) & set(OWNERS):
                if not any(rel == o or rel.startswith(o + "/") for o in OWNERS[lib]):
                    bad.append(f"{rel} imports {lib} (allowed only in {sorted(OWNERS[lib])})")
    assert not bad, "\n".join(bad)


def test_no_grab_bag_modules() -> None:
    bad = [
        str(p.relative_to(REPO))
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if p.name in {"utils.py", "helpers.py", "misc.py", "common.py"}
    ]
    assert not bad
