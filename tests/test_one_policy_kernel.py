"""Only the policy kernel turns a policy graph into actions.

Every consumer (control loop, shadow runs, parity campaign, distill evaluation, router
worker, benches) must go through `runtime.kernel`, so what is measured and attested is
what the robot actuates. This scans the source for sessions created anywhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["runtime", "fleet", "distill", "cloud", "tui", "edgeflux", "bench", "examples"]
SESSION_NAMES = {"PolicySession", "InferenceSession"}

# Files that may create a session, and why none of them turns observations into actions.
ALLOWED_SESSIONS = {
    "runtime/session.py": "defines PolicySession over onnxruntime",
    "runtime/kernel.py": "the policy kernel itself (load_kernel)",
    "runtime/service.py": "loads and warms a verified bundle; the loop runs it through a kernel",
    "runtime/cli.py": "`runtime bench`: the bare graph is the baseline of the per-tick cost",
    "bench/runtime_step.py": "the bare graph is the baseline of the per-tick cost",
    "distill/export.py": "graph-level parity torch vs onnxruntime at export time",
    "cloud/attest/units.py": "numeric_parity: the bare graph on every execution provider",
    "examples/bring_your_own_model.py": "graph-level export check torch vs onnxruntime",
}
ALLOWED_ORT_IMPORTS = {
    "runtime/session.py": "the only runtime module that imports onnxruntime",
    "bench/runtime_step.py": "a bare onnxruntime session is the bench's baseline",
    "examples/bring_your_own_model.py": "a user's own export check, outside EdgeFlux",
}


def _sources() -> list[tuple[str, ast.Module]]:
    out = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            rel = path.relative_to(REPO).as_posix()
            out.append((rel, ast.parse(path.read_text(), filename=rel)))
    return out


def _called_name(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def _session_offenders(sources: list[tuple[str, ast.Module]]) -> list[str]:
    offenders = []
    for rel, tree in sources:
        if rel in ALLOWED_SESSIONS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) in SESSION_NAMES:
                offenders.append(f"{rel}:{node.lineno} calls {_called_name(node)}")
    return offenders


def test_no_code_outside_the_kernel_creates_a_policy_session() -> None:
    offenders = _session_offenders(_sources())
    assert not offenders, "use runtime.kernel (load_kernel / KernelPolicy) instead: " + "; ".join(
        offenders
    )


def test_only_the_session_module_imports_onnxruntime() -> None:
    offenders = []
    for rel, tree in _sources():
        if rel in ALLOWED_ORT_IMPORTS:
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{rel}:{node.lineno}" for n in names if n.split(".")[0] == "onnxruntime"]
    assert not offenders, f"onnxruntime imported outside runtime/session.py: {offenders}"


def test_the_scan_finds_a_session_created_elsewhere() -> None:
    """The scan is not vacuous: sessions in an ordinary module are found, by either name."""
    code = (
        "import onnxruntime as ort\n"
        "from runtime.session import PolicySession\n"
        "a = PolicySession(b'')\n"
        "b = ort.InferenceSession(b'')\n"
    )
    found = _session_offenders([("cloud/other.py", ast.parse(code))])
    assert found == [
        "cloud/other.py:3 calls PolicySession",
        "cloud/other.py:4 calls InferenceSession",
    ]
    assert _session_offenders([("runtime/kernel.py", ast.parse(code))]) == []
