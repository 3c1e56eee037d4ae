#!/usr/bin/env bash
# Stage Y on a lent GPU machine (the device tool; results under $OUT), in one prepared run:
#   0. PyAV from .whl/ and the DejaVu fonts from .devrun/fonts/ (so the pictures match the ones made on the CPU host)
#   1. fresh synthetic data (scripts/stage_y_data.sh): the stage-W/X mix at ~1.5x, new seeds (text, video, GUI, documents at
#      the grounding sets' scale + the mix + s224; 43,700 records in 97 s on 14 cores), rendered while a 6-step
#      CUDA smoke run checks the trainer (towers trainable, so the vision backward runs too); a failed smoke ends
#      the run at once
#   2. two runs at once from the shipped weights (qwenvl/embedded), 16,384-token packs, bf16 autocast:
#      y1 towers frozen (as W/X), y2 towers at 1/10 of the language model's rate (can the tower learn glyphs?)
#   3. both exports as bf16 + their metrics + the logs, packed as $OUT/y.tgz.* (below the 16 MiB return limit)
# Its one run so far (2026-11-30, H200) came before the trainer turned cuDNN attention off on CUDA
# (qwenvl.device.varlen_friendly_sdpa): 4.7 s a step, 58 and 49 steps. With it off, one run on the same data
# with 12 loader processes made 501 steps in 2.2 min (0.22 s a step at the end, 74k tokens/s; runs/y/pkg/y3,
# docs/embedded-runs/notes.md). Carry: .whl (the PyAV wheel for Python 3.12) and .devrun (the fonts), e.g.
#   run(command="TOTAL_S=510 bash scripts/device_stage_y.sh", carry=[".whl", ".devrun"], timeout_s=580)
# Prepare here once (both paths ignored through .git/info/exclude; together with the tree under the 64 MiB limit):
#   echo /.whl/ >> .git/info/exclude; echo /.devrun/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl av==18.1.0
#   mkdir -p .devrun/fonts && cp /usr/share/fonts/truetype/dejavu/DejaVu{Sans,Serif,SansMono,Sans-Bold}.ttf .devrun/fonts/
# Env: TOTAL_S (the whole run ends by then), SCALE (data size factor), DEVICE, PACK, LR, PY.
# Unpack here: cat $FILES_AT/y.tgz.* | tar xzf - -C runs/y   (then runs/y/pkg/y1, runs/y/pkg/y2)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-500}
SCALE=${SCALE:-1}
DEVICE=${DEVICE:-cuda}
PACK=${PACK:-16384}
LR=${LR:-2e-4}
PY=${PY:-python3}
OUT=${OUT:-/tmp/y-out}
E=${E:-/tmp/y}
mkdir -p "$OUT" "$E/logs"
N=$(nproc)
W=$(( N > 4 ? N - 2 : 1 ))          # rendering processes
LW=$(( N > 8 ? (N - 4) / 2 : 0 ))    # loader processes per training run
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$E/logs/run.log"; }
pack() {
  cp "$E/logs/run.log" "$OUT/run.log" 2>/dev/null
  tar czf - -C "$E" pkg logs 2>/dev/null | split -b 15M - "$OUT/y.tgz."
  ls -la "$OUT" >> "$OUT/run.log"
}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
if [ -d .devrun/fonts ] && [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  mkdir -p /usr/share/fonts/truetype/dejavu && cp .devrun/fonts/*.ttf /usr/share/fonts/truetype/dejavu/
fi
mount -o remount,size=64G /dev/shm 2>/dev/null || true
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1; df -h /dev/shm
  $PY -c "import torch, av, PIL; print('torch', torch.__version__, torch.cuda.is_available(), 'av', av.__version__, 'PIL', PIL.__version__)"
  $PY -c "from qwenvl.synth import FONT_FAMILIES; print('fonts', FONT_FAMILIES)"; } > "$E/logs/machine.txt" 2>&1
cat "$E/logs/machine.txt" | tee -a "$E/logs/run.log"

D=$E/data
n() { $PY -c "print(max(8, int($1 * $SCALE)))"; }
build() {  # OUT SPLIT CURRICULUM TASKS N SEED [more]
  local out=$1 split=$2 lvl=$3 tasks=$4 k=$5 seed=$6; shift 6
  $PY -m qwenvl.synth.build --out "$out" --split "$split" --curriculum "$lvl" --tasks "$tasks" --n "$(n "$k")" \
      --seed "$seed" --workers "$W" "$@" >> "$E/logs/data.log" 2>&1 || echo "build $out failed" >> "$E/logs/data.log"
}
source scripts/stage_y_data.sh
(
  ydata
  $PY -m qwenvl.synth.build --out "$D" --split heldout --n 40 --seed 1 --curriculum 0 --name heldout-c0 \
      --workers "$W" >> "$E/logs/data.log" 2>&1
  $PY -m qwenvl.synth.build --out "$D" --split heldout --n 40 --seed 1001 --curriculum 1 --name heldout-c1 \
      --workers "$W" >> "$E/logs/data.log" 2>&1
) &
data=$!

# the smoke run: a few records of every family, 6 steps with everything trainable
$PY -m qwenvl.synth.build --out "$E/smoke" --split train --curriculum 1 --tasks grounding,text,video,gui,documents \
    --n 40 --seed 7 --workers 2 > "$E/logs/smoke.log" 2>&1
$PY -m qwenvl train sft --config configs/embedded.yaml --model qwenvl/embedded --data "[$E/smoke/train.jsonl]" \
    --output-dir "$E/smoke-run" --max-steps 6 --lr 1e-4 --set vision_lr=1e-5 --set merger_lr=1e-5 \
    --set time_budget_min=0 --set save_every=0 --set export=false --pack-length 4096 --device "$DEVICE" \
    --autocast bfloat16 >> "$E/logs/smoke.log" 2>&1
rc=$?
say "smoke rc=$rc"
if [ $rc -ne 0 ]; then
  tail -40 "$E/logs/smoke.log"; kill $data 2>/dev/null; pack; exit 1
fi
tail -3 "$E/smoke-run/metrics.jsonl" | tee -a "$E/logs/run.log"
wait $data
say "data done: $(cat $D/y/*/train.jsonl | wc -l) records; $(grep -c failed "$E/logs/data.log") failed builds"
grep failed "$E/logs/data.log" | tee -a "$E/logs/run.log"

TX=$(ylist)
budget=$($PY -c "print(round(max(0.5, ($TOTAL_S - ($(date +%s) - $T0) - 75) / 60), 2))")
say "training budget $budget min each, $LW loader processes each"
run() {  # NAME SEED [towers settings]
  local name=$1 seed=$2; shift 2
  $PY -m qwenvl train sft --config configs/embedded.yaml --model qwenvl/embedded --data "[$TX]" \
      --output-dir "$E/$name" --time-budget-min "$budget" --lr "$LR" --warmup-steps 30 --set seed="$seed" \
      --set "eval_data=[$D/heldout-c0.jsonl,$D/heldout-c1.jsonl]" --eval-every 150 --set eval_max_samples=60 \
      --set eval_media_gap=true --set save_every=0 --pack-length "$PACK" --num-workers "$LW" --device "$DEVICE" \
      --autocast bfloat16 "$@" > "$E/logs/$name.log" 2>&1
  echo "$name rc=$?" >> "$E/logs/run.log"
}
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 20 > "$E/logs/smi.log" 2>&1 &
run y1 21 --set tune_vision=false --set tune_merger=false &
r1=$!
run y2 22 --set vision_lr="$($PY -c "print($LR / 10)")" --set merger_lr="$($PY -c "print($LR / 10)")" &
r2=$!
wait $r1 $r2
say "training done"
for name in y1 y2; do
  $PY scripts/export_bf16.py "$E/$name/export" "$E/pkg/$name" --metrics "$E/$name/metrics.jsonl" >> "$E/logs/run.log" 2>&1
done
say "packed"
pack
