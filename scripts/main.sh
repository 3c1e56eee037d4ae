#!/usr/bin/env bash
# Quick start 1/2: set up and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh video >&2
exec .venv/bin/qwenvl demo "$@"
