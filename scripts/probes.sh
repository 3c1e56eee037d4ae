#!/usr/bin/env bash
# Learnability probes for the embedded model's shape (qwenvl.synth.probes): does a fresh from-scratch model learn
# the colour of one square, which side it is on (`cell`: the square fills one token; `side`: anywhere), and where
# its centre is, on pictures of one size (`point`) and of several (`point_sizes`, from the init and, as a
# curriculum, from the `point` run)? `cell` runs twice: with the embedded shape (MRoPE theta 5) and with theta 50,
# whose columns turn too little to be told apart. `when` (the second in which a square shows in a 4-24 s clip) runs
# with the embedded sections [4, 14, 14], whose temporal code aliases every ~7 positions, and with [12, 10, 10].
# Towers frozen at their init, language model trained at LR for STEPS steps of PACK-token packs, then greedy
# answers on 60 held-out pictures or clips.
#
#   bash scripts/probes.sh runs/probe            # 2 CPU cores: ~70 minutes (9 runs of ~7 minutes + scoring)
#
# Settings (environment): STEPS (300), LR (1e-3), PACK (2048), PYTHON. The tokenizer is the embedded model's.
# Results: OUT/<run>/score.json and a summary on stdout (docs/embedded-runs/notes.md tables them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/probe}
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-300}
LR=${LR:-1e-3}
PACK=${PACK:-2048}
export TOKENIZERS_PARALLELISM=false

$PY - "$OUT" <<'EOF'
import json, shutil, sys
from pathlib import Path
from qwenvl import embedded
from qwenvl.synth.embedded import SHAPE, init_checkpoint
out = Path(sys.argv[1])
made = out / "init" / "config.json"  # (re)made when missing or from an earlier shape
remake = not made.is_file() or json.loads(made.read_text())["rope_theta"] != SHAPE["text"]["rope_theta"]
if remake:
    init_checkpoint(out / "init", embedded.DIR, seed=0)  # the embedded shape: MRoPE theta 5, [4, 14, 14]
blind = out / "init-theta50"  # the same weights with the earlier theta 50
if remake or not (blind / "config.json").is_file():
    shutil.copytree(out / "init", blind, dirs_exist_ok=True)
    cfg = json.loads((blind / "config.json").read_text())
    cfg["rope_theta"] = 50.0
    (blind / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
spread = out / "init-t12"  # the same weights with the temporal section spread over 12 frequencies
if remake or not (spread / "config.json").is_file():
    shutil.copytree(out / "init", spread, dirs_exist_ok=True)
    cfg = json.loads((spread / "config.json").read_text())
    cfg["rope_scaling"]["mrope_section"] = [12, 10, 10]
    (spread / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
EOF
$PY -m qwenvl.synth.probes build --out "$OUT" --task colour --n 4000 --seed 7 >/dev/null
$PY -m qwenvl.synth.probes build --out "$OUT" --task side --n 4000 --seed 5 >/dev/null
$PY -m qwenvl.synth.probes build --out "$OUT" --task cell --n 4000 --seed 11 >/dev/null
$PY -m qwenvl.synth.probes build --out "$OUT" --task point --n 6000 --seed 3 >/dev/null
$PY -m qwenvl.synth.probes build --out "$OUT" --task point_sizes --n 6000 --seed 3 >/dev/null
$PY -m qwenvl.synth.probes build --out "$OUT" --task when --n 4000 --seed 13 >/dev/null

# TASK:START; START is an init, or an earlier run whose export continues (the curriculum: point, then point_sizes)
for run in cell:init cell:init-theta50 side:init point:init point_sizes:init point_sizes:point-init colour:init when:init when:init-t12; do
  task=${run%%:*}; init=${run#*:}; dir="$OUT/$task-$init"; model="$OUT/$init"
  [ -f "$model/config.json" ] || model="$model/export"
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$model" --data "[$OUT/$task-train.jsonl]" \
      --output-dir "$dir" --max-steps "$STEPS" --lr "$LR" --warmup-steps 20 --epochs 20 --pack-length "$PACK" \
      --min-lr-ratio 0.1 --time-budget-min 0 --tune-vision false --tune-merger false --save-every 0 >"$dir.log" 2>&1
  $PY -m qwenvl.synth.probes score -m "$dir/export" --data "$OUT/$task-heldout.jsonl" >"$dir/score.json" 2>/dev/null
  $PY -c "import json,sys; s=json.load(open(sys.argv[1])); r=[json.loads(l) for l in open(sys.argv[2]) if '\"samples\"' in l]; \
print(f\"{sys.argv[3]:<24} steps {len(r):4d}  samples {sum(x['samples'] for x in r):6d}  last-20 loss \
{sum(x['loss'] for x in r[-20:]) / 20:.3f}  \" + ', '.join(f'{k} {v:.3f}' for k, v in s.items() if isinstance(v, float)) \
+ f\"  e.g. {s['examples'][:2]}\")" "$dir/score.json" "$dir/metrics.jsonl" "$task-$init"
done
