"""The repository's text speaks to its users and maintainers.

Every reference resolves inside the repository (no planning documents kept
elsewhere), and nothing speaks of how the work on it was organised (tracker
numbers, who did which part). What a reader needs is written in docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
    "__snapshots__",
}
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".toml", ".proto", ".tcss", ".ini", ".sh", ".txt", ".cfg"}
EXTENSIONLESS = {"scripts"}  # folders whose files are text without a suffix

# Written so that this file does not match itself.
FORBIDDEN = {
    "a planning document outside the repository": re.compile(
        r"\b(?:DESIGN|REFERENCES|STYLE)\.md\b|\b(?:DESIGN|REFERENCES)\s*(?:§|section\b)"
    ),
    "a path outside the repository": re.compile(r"\.\./share[d]\b|/work/share[d]\b"),
    "a tracker number": re.compile(r"\bissues?\s+#?\d+\b"),
    "how the work was organised": re.compile(
        r"\bthe\s+[\w-]+(?:\s+[\w-]+)?\s+issue\b|\ba\s+later\s+issue\b"
        r"|\b(?:helper|lead)\s+(?:session|engineer)s?\b"
    ),
}


def _text_files() -> list[Path]:
    out = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if not path.is_file() or path.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")):
            continue
        if path.suffix in TEXT_SUFFIXES or (path.suffix == "" and rel.parts[0] in EXTENSIONLESS):
            out.append(path)
    return out


def _findings(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        text = path.read_text(errors="replace")
        for what, pattern in FORBIDDEN.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                found.append(f"{name}:{line}: {what}: {m.group(0)!r}")
    return found


def test_no_references_outside_the_repository_or_to_how_work_was_organised() -> None:
    paths = _text_files()
    assert any(p.name == "README.md" for p in paths) and len(paths) > 100  # it looked
    found = _findings(paths)
    assert not found, "\n".join(found)


def test_the_check_catches_each_kind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    lines = [
        "# see " + "DESIGN" + ".md for why",
        "# the verdict rule (" + "REFERENCES" + " §4)",
        "# copied from ../" + "shared/notes",
        "# target (" + "issue" + " 12): fast",
        "# owned" + " by the fleet-agent" + " issue",
    ]
    bad.write_text("\n".join(lines) + "\n")
    found = _findings([bad])
    assert [f.split(":")[1] for f in found] == ["1", "2", "3", "4", "5"], found
    fine = tmp_path / "fine.py"
    fine.write_text(
        '"""The CA issues one certificate per device, owned by the caller; see docs/."""\n'
    )
    assert _findings([fine]) == []
