#!/usr/bin/env bash
# Create .venv (if missing) and install qwenvl into it. Usage: scripts/setup.sh [EXTRAS], e.g. "dev" or "video".
# torch is pinned first to the CPU build that lies on this machine's disk; asking pip for a plain "torch"
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "torch==${QWENVL_TORCH_VERSION:-2.13.0}" 2>&1 | quiet
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"${pip[@]}" -e "$spec" 2>&1 | quiet
.venv/bin/python -c "import qwenvl" 
