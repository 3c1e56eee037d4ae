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
# The browser test (tests/test_serve_browser.py) drives Debian's chromium through its chromium-driver.
if [[ ",${extras}," == *",dev,"* ]] && ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      >/dev/null 2>&1 || echo "setup: could not install chromium + chromium-driver (the browser test will fail)" >&2
  else
    echo "setup: install chromium and chromium-driver for the browser test (apt-get install chromium chromium-driver)" >&2
  fi
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"${pip[@]}" -e "$spec" 2>&1 | quiet
.venv/bin/python -c "import qwenvl" 
