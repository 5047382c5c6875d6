"""Regenerate the committed Python modules from `protos/*.proto`.

Usage::

    python -m protos.generate            # rewrite protos/*_pb2*.py(i)
    python -m protos.generate --check    # exit 1 if regenerating would change anything

Needs `grpcio-tools` (the `dev` extra). Run from anywhere: paths are resolved
from this file, and imports come out as `from protos import x_pb2`.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto into `out_root/protos/`; return the files written."""
    from grpc_tools import protoc  # dev-only dependency

    try:
        import importlib.resources as resources

        include = str(resources.files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover
        include = str(Path(protoc.__file__).parent / "_proto")
    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    sources = sorted(p.relative_to(REPO_ROOT).as_posix() for p in PROTO_DIR.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code} on {sources}")
    return sorted(p for p in (out_root / "protos").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if output would change")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        names = {p.name for p in produced}
        committed = {p.name for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        if ns.check:
            stale = sorted(
                n
                for n in names | committed
                if n not in names
                or n not in committed
                or not filecmp.cmp(Path(tmp) / "protos" / n, PROTO_DIR / n, shallow=False)
            )
            if stale:
                print("generated protos are out of date: " + ", ".join(stale), file=sys.stderr)
                print("run: python -m protos.generate", file=sys.stderr)
                return 1
            return 0
        for name in committed - names:
            (PROTO_DIR / name).unlink()
        for path in produced:
            shutil.copyfile(path, PROTO_DIR / path.name)
        print(f"wrote {len(produced)} files to {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
