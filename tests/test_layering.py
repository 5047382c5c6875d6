"""Import contracts (docs/architecture.md, "Layers"), checked in fresh interpreters."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
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
    "paho": {"protos/mqtt_connect.py"},  # the robot's transport and the plane's client share it
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


# ---------------------------------------------------------------- import cycles
# Every import counts: at module level, inside a function (a lazy import that dodges
# a cycle at run time is still a cycle in the design), under TYPE_CHECKING, and a
# "package.module:attribute" string (how commands and plane services are mounted).
# Importing a.b.c also runs a/b/__init__.py, so that package is a dependency too,
# unless the importer lives inside it.
_PLUGIN = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+):[A-Za-z_]\w*$")


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    where: str  # path:line


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _resolve(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _edges(module: str, modules: dict[str, tuple[Path, bool]]) -> list[_Edge]:
    path, is_package = modules[module]
    rel = path.relative_to(REPO).as_posix()
    targets: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join([*here[: len(here) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append((sub if sub in modules else base, node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _PLUGIN.match(node.value)
            if match:
                targets.append((match.group(1), node.lineno))
    edges = []
    for name, line in targets:
        target = _resolve(name, modules)
        if target is None:
            continue
        parts = target.split(".")
        for n in range(1, len(parts) + 1):
            dep = ".".join(parts[:n])
            inside = module == dep or module.startswith(dep + ".")
            if dep in modules and not inside and (n == len(parts) or modules[dep][1]):
                edges.append(_Edge(module, dep, f"{rel}:{line}"))
    return edges


def _find_cycles(edges: list[_Edge]) -> list[list[_Edge]]:
    """One shortest cycle through each strongly connected group of nodes."""
    graph: dict[str, dict[str, _Edge]] = {}
    for e in edges:
        if e.source != e.target:
            graph.setdefault(e.source, {}).setdefault(e.target, e)
            graph.setdefault(e.target, {})
    cycles, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        # Breadth-first from start: the first way back to start is a shortest cycle.
        back: dict[str, _Edge] = {}
        queue = deque([start])
        seen = {start}
        found = None
        while queue and found is None:
            node = queue.popleft()
            for nxt, edge in sorted(graph[node].items()):
                if nxt == start:
                    found = edge
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    back[nxt] = edge
                    queue.append(nxt)
        if found is None:
            continue
        path = [found]
        while path[0].source != start:
            path.insert(0, back[path[0].source])
        done.update(e.source for e in path)
        cycles.append(path)
    return cycles


def _describe(cycles: list[list[_Edge]]) -> str:
    return "\n".join(
        " -> ".join([c[0].source, *(e.target for e in c)])
        + "".join(f"\n    {e.source} imports {e.target} at {e.where}" for e in c)
        for c in cycles
    )


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    edges = [e for m in modules for e in _edges(m, modules)]
    cycles = _find_cycles(edges)
    assert not cycles, "import cycles:\n" + _describe(cycles)


def test_cycle_finder_sees_lazy_imports_and_reports_the_path(tmp_path: Path) -> None:
    """The checker itself: a function-level import that closes a loop is found."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from c import x\n")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n"
    )
    modules = {p.stem: (p, False) for p in tmp_path.glob("*.py")}
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        cycles = _find_cycles([e for m in modules for e in _edges(m, modules)])
    finally:
        REPO = saved
    assert [[e.source for e in c] for c in cycles] == [["a", "b", "c"]]
    assert [e.where for e in cycles[0]] == ["a.py:1", "b.py:2", "c.py:3"]
