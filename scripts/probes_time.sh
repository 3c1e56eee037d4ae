#!/usr/bin/env bash
# The time rungs of the embedded model's video task (qwenvl.synth.probes), from the shipped model's trained towers
# (towers frozen, language model trained):
#   1. `when`: the one second in which a square shows in a 4-24 s clip at 2 fps (600 steps at 5e-4);
#   2. from 1, `span` + `span_named`: the span of whole temporal patches in which a square of a named colour shows,
#      at 1, 2 or 4 fps, alone or beside a square of another colour in every frame, asked and answered in the
#      video-grounding task's words (600 steps at 5e-4).
# Each run is scored on its probes' 60 held-out clips (exact second / temporal IoU, and the blind answers).
#
#   bash scripts/probes_time.sh runs/probe-time     # 2 CPU cores: ~40 minutes
#
# Settings (environment): MODEL (the shipped model, qwenvl/embedded), STEPS (600), LR (5e-4), PYTHON.
# Results: OUT/<run>/score-<task>.json; docs/embedded-runs/notes.md (twentieth session) tables them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/probe-time}
PY=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-qwenvl/embedded}
STEPS=${STEPS:-600}
LR=${LR:-5e-4}
export TOKENIZERS_PARALLELISM=false

source scripts/time_rungs.sh
rung_data "$OUT"

run() {  # NAME FROM DATA TASKS...
  local name=$1 from=$2 data=$3; shift 3
  [ -f "$OUT/$name/export/config.json" ] || rung_train "$from" "$data" "$OUT/$name" "$STEPS" "$LR" >"$OUT/$name.log" 2>&1
  for task in "$@"; do
    $PY -m qwenvl.synth.probes score -m "$OUT/$name/export" --data "$OUT/$task-heldout.jsonl" \
        >"$OUT/$name/score-$task.json" 2>/dev/null
    $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], ', '.join(f'{k} {v:.3f}' \
for k, v in s.items() if isinstance(v, float)), ' e.g.', s['examples'][:2])" "$OUT/$name/score-$task.json" "$name/$task"
  done
}
run when "$MODEL" "$OUT/when-train.jsonl" when
run span "$OUT/when/export" "$OUT/span-train.jsonl,$OUT/span_named-train.jsonl" span span_named
