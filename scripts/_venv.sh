# Shared by scripts/demo and scripts/test: create .venv and install EdgeFlux with extras "$1".
# torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0, a CPU build): a bare
# `torch` requirement would pull gigabytes of CUDA packages.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${EDGEFLUX_VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
extras="$1"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "EdgeFlux needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.edgeflux-installed"
want="$extras|$TORCH_SPEC|$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing $TORCH_SPEC, then edgeflux[$extras]"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
