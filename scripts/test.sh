#!/usr/bin/env bash
# Quick start 2/2: set up (with the test oracle, transformers 4.51.3) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
