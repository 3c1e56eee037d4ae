#!/usr/bin/env bash
# Train the embedded default model from scratch, end to end (docs/embedded-model.md, "How the shipped model was made"):
#   data   one-shape grounding scenes at 112 x 112 (data/a); the mix: every task at curriculum levels 0 and 1
#          (grounding 12k records, documents + GUI 1.2k, text + video 800); the report's held-out files; all seeded
#   init   the embedded shape (qwenvl/synth/embedded.py), seed 0, with the package's tokenizer
#          (TOKENIZER=train: a new one trained on the mix's corpus)
#   F      `qwenvl train sft --config configs/embedded.yaml` on data/a with the towers (vision + merger) frozen, 40 min:
#          the language model learns to place and to read the colour from tokens that hold still
#   G      F continued on data/a with the towers at 1/100 of the rate (LR 5e-4), 45 min   (F + G: 85 min, the default)
#   H      G continued on scenes of 1-3 shapes at 112 x 112 (data/m) + data/a, LR 5e-4, towers at 1/100, 18 min:
#          several shapes, where steps are cheap
#   I      H continued on data/m + more such scenes (data/m2) + data/a, LR 4e-4, 38 min
#   J      (not in the shipped chain) I continued on data/m + data/a + the mix, LR 4e-4, 70 min
#   K L N  a ladder of picture sizes from I: data/m + 1-3 shapes up to 168 and 224 px (data/s168, data/s224), 35 min
#          at 4e-4 (K), 24 more at 3e-4 (L); + up to 336 px (data/s336), 28 min at 3e-4 (N)
#   P      `python -m qwenvl.train.tower_aux` from N: the vision tower alone learns to put each object's colour and
#          shape into the tokens of its cells, anchored to N's tokens (1,850 steps of 8 pictures)
#   Q      P continued on the ladder + data/g0, LR 3e-4, towers at 1/100, 35 min
#   R      tower_aux again from Q (3,100 steps)
#   S      R continued on Q's data with the towers frozen, LR 3e-4, 35 min
#   T      S continued on S's data + data/g1 (1-3 shapes at every size), towers frozen, 30 min (shipped in the
#          thirteenth session)
#   U V    T continued on the ladder + the mix (every task family, the grounding sets' scale for the others' 1/10),
#          towers frozen: 22 min at 3e-4 (U), 35 more at 2e-4 (V)
#   W X    V continued on text, video, GUI and document records at the grounding sets' scale (data/rt0 ... d01,
#          14.6k) + the mix + data/s224, towers frozen: 50 min at 3e-4 (W), 25 more at 1.5e-4 (X); the weights end
#          in OUT_DIR/x/export (shipped in the fourteenth session)
#   Y      X continued on a fresh W/X mix at ~1.5x (data/y/*, 43,700 records, new seeds), towers frozen, 501 steps of
#          16,384-token packs at 2e-4: made on a lent H200 in 2.2 min (scripts/device_stage_y.sh; DEVICE=cuda)
#   Z      Y continued on 2 cores on W/X's data + 5,000 more videos (data/v2, data/v3), towers frozen, 50 min at
#          1.5e-4; the weights end in OUT_DIR/z/export (the shipped model, fifteenth session)
#   E M O  the time rungs, then the whole mix with them (not in the shipped chain: O's temporal mIoU rose 0.315 ->
#          0.374 but clicks and points fell; notes, first section, twenty-third session):
#          E: Z's language model, towers frozen, on the `when` probe (qwenvl.synth.probes: the one second in which a
#          square shows), 600 steps at 5e-4; M: E on the `span` + `span_named` probes (the span of whole temporal
#          patches in which a square of a named colour shows, in the video-grounding task's words), 600 steps at
#          5e-4 (E and M are scripts/probes_time.sh's two runs); O: M continued on Z's data + the span probes,
#          towers frozen, 45 min at 2e-4
#   A-D    (STAGES=abcd: the model shipped until the eleventh session) A = F with the towers at 1/100 from the
#          start (scripts/claims.sh starts from it); B: the mix, 45 min at 6e-4; C: the mix, 30 min at 4e-4;
#          D: data/a + the mix, 80 min at 4e-4
#
#   bash scripts/train_embedded.sh                        # 2 CPU cores: ~1.5 min of data, then 85 min of training
#   STAGES=fghiklnpqrstuvwxyz bash scripts/train_embedded.sh  # the shipped model: 85 + 56 + 87 + 100 + 132 + 50 min
#                                                          # + 2 x ~15 on 2 cores, and Y (2.2 min on a GPU, ~40 on 2 cores)
#   DEVICE=cuda AUTOCAST=bfloat16 BUDGET_MIN=8 bash scripts/train_embedded.sh /tmp/emb
#   .venv/bin/python scripts/ship_embedded.py runs/embedded/z/export --heldout runs/embedded/data/heldout-c1.jsonl --objects 2
#
# Settings (environment): STAGES (fg, the default; fghiklnpqrstuvwxyz; emo (the time rungs and O from Z); abcd; any stages in that order), BUDGET_MIN (the
# first two stages, split 40:45; or BUDGET_F ... BUDGET_Z, BUDGET_O, BUDGET_A ... BUDGET_D; Y runs 501 steps unless BUDGET_Y), PACK, WORKERS, GEN_WORKERS, DEVICE,
# AUTOCAST, TOKENIZER (a directory, or "train"), DATA_ONLY=1 (stop after the data), PYTHON. Extra arguments go
# to every `qwenvl train` call. A stage whose export exists is skipped (delete OUT_DIR/f, .../g, ... to redo it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/embedded}
shift || true
PY=${PYTHON:-.venv/bin/python}
PACK=${PACK:-2048}
WORKERS=${WORKERS:-0}                    # loader processes during training (0: in the training process)
GEN_WORKERS=${GEN_WORKERS:-$(nproc)}     # processes rendering the data
DEVICE=${DEVICE:-auto}
AUTOCAST=${AUTOCAST:-auto}
TOKENIZER=${TOKENIZER:-qwenvl/embedded}
if [ -n "${BUDGET_MIN:-}" ]; then
  first=$($PY -c "print(round($BUDGET_MIN * 40 / 85, 2))")
  second=$($PY -c "print(round($BUDGET_MIN * 45 / 85, 2))")
  BUDGET_F=${BUDGET_F:-$first} BUDGET_A=${BUDGET_A:-$first}
  BUDGET_G=${BUDGET_G:-$second} BUDGET_B=${BUDGET_B:-$second}
fi
export TOKENIZERS_PARALLELISM=false
D=$OUT_DIR/data

build() {  # OUT SPLIT CURRICULUM TASKS N SEED [more build args]
  local out=$1 split=$2 lvl=$3 tasks=$4 n=$5 seed=$6; shift 6
  [ -f "$out/$split.jsonl" ] || $PY -m qwenvl.synth.build --out "$out" --split "$split" --curriculum "$lvl" \
      --tasks "$tasks" --n "$n" --seed "$seed" --workers "$GEN_WORKERS" "$@"
}
build "$D/a" train 0 grounding 3000 1 --image-size 112 112
build "$D/a" heldout 0 grounding 40 1001 --image-size 112 112
if [[ "${STAGES:-fg}" == *[hijklnpqrstuvwx]* ]]; then
  build "$D/m" train 1 grounding 3000 21 --image-size 112 112
  build "$D/m" heldout 1 grounding 40 1021 --image-size 112 112
  build "$D/m2" train 1 grounding 3000 22 --image-size 112 112
fi
if [[ "${STAGES:-fg}" == *[klnpqrstuvwx]* ]]; then
  build "$D/s168" train 1 grounding 2000 23 --max-side 168
  build "$D/s224" train 1 grounding 2000 24 --max-side 224
  build "$D/s224" heldout 1 grounding 40 1024 --max-side 224
  build "$D/s336" train 1 grounding 2000 25 --max-side 336
fi
build "$D/g0" train 0 grounding 1500 11
build "$D/g1" train 1 grounding 1500 12
build "$D/o0" train 0 documents,gui 300 13
build "$D/o1" train 1 documents,gui 300 14
build "$D/t0" train 0 text,video 100 15
build "$D/t1" train 1 text,video 100 16
if [[ "${STAGES:-fg}" == *[wxzo]* ]]; then  # the text / video / GUI families at the grounding sets' scale
  build "$D/s224" train 1 grounding 2000 24 --max-side 224   # in their mix (TX) too
  build "$D/rt0" train 0 read_text 3000 41
  build "$D/st0" train 0 spot_text 1500 42
  build "$D/rt1" train 1 read_text,spot_text,key_values 1000 43
  build "$D/v0" train 0 video_grounding 2500 44
  build "$D/v1" train 1 video_grounding 1500 45
  build "$D/u0" train 0 computer_use 1500 46
  build "$D/u1" train 1 computer_use 1000 47
  build "$D/d01" train 1 document 600 48
fi
if [[ "${STAGES:-fg}" == *[zo]* ]]; then  # stage Z's extra videos
  build "$D/v2" train 0 video_grounding 3000 51
  build "$D/v3" train 1 video_grounding 2000 52
fi
source scripts/time_rungs.sh
if [[ "${STAGES:-fg}" == *[emo]* ]]; then rung_data "$D/probe"; fi  # the time rungs (as scripts/probes_time.sh)
source scripts/stage_y_data.sh
if [[ "${STAGES:-fg}" == *y* ]]; then ydata; fi  # stage Y's fresh mix
# the report's held-out files (docs/embedded-model.md)
[ -f "$D/heldout-c0.jsonl" ] || $PY -m qwenvl.synth.build --out "$D" --split heldout --n 40 --seed 1 --curriculum 0 \
    --name heldout-c0 --workers "$GEN_WORKERS"
[ -f "$D/heldout-c1.jsonl" ] || $PY -m qwenvl.synth.build --out "$D" --split heldout --n 40 --seed 1001 \
    --curriculum 1 --name heldout-c1 --workers "$GEN_WORKERS"
[ "${DATA_ONLY:-0}" = 1 ] && exit 0
mix="$D/g0/train.jsonl,$D/g1/train.jsonl,$D/o0/train.jsonl,$D/o1/train.jsonl,$D/t0/train.jsonl,$D/t1/train.jsonl"

if [ ! -f "$OUT_DIR/init/config.json" ]; then
  if [ "$TOKENIZER" = train ]; then
    $PY -m qwenvl.synth.embedded init --out "$OUT_DIR/init" --corpus ${mix//,/ } --seed 0
  else
    $PY -m qwenvl.synth.embedded init --out "$OUT_DIR/init" --tokenizer "$TOKENIZER" --seed 0
  fi
fi
common=(--pack-length "$PACK" --num-workers "$WORKERS" --device "$DEVICE" --autocast "$AUTOCAST" --eval-every 500
        --set eval_max_samples=60 --set eval_media_gap=true)
STAGES=${STAGES:-fg}
last=
stage() {  # NAME FROM DATA EVAL BUDGET LR WARMUP SEED TOWERS (frozen, or their rate as a fraction of LR's)
  local name=$1 from=$2 data=$3 eval=$4 budget=$5 lr=$6 warm=$7 seed=$8 towers=$9; shift 9
  [[ "$STAGES" == *$name* ]] || return 0
  last=$name
  [ -f "$OUT_DIR/$name/export/config.json" ] && return 0
  local t=(--set tune_vision=false --set tune_merger=false)
  if [ "$towers" != frozen ]; then
    local tlr; tlr=$($PY -c "print($lr * $towers)")
    t=(--set vision_lr="$tlr" --set merger_lr="$tlr")
  fi
  local src=$OUT_DIR/$from/export
  [ "$from" = init ] && src=$OUT_DIR/init
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$src" --data "[$data]" \
      --output-dir "$OUT_DIR/$name" --time-budget-min "$budget" --lr "$lr" --warmup-steps "$warm" "${t[@]}" \
      --set seed="$seed" --set "eval_data=[$eval]" "${common[@]}" "$@"
}
A=$D/a/train.jsonl
AH=$D/a/heldout.jsonl
CH=$D/heldout-c0.jsonl,$D/heldout-c1.jsonl
M=$D/m/train.jsonl
# the shipped model (fifteenth session): F, G, H, I, the ladder K, L, N, then P, Q, R, S, T, U, V, W, X, Y, Z
stage f init "$A" "$AH" "${BUDGET_F:-40}" 1e-3 30 0 frozen "$@"
stage g f "$A" "$AH" "${BUDGET_G:-45}" 5e-4 20 5 0.01 "$@"
stage h g "$M,$A" "$AH" "${BUDGET_H:-18}" 5e-4 20 7 0.01 "$@"
stage i h "$M,$D/m2/train.jsonl,$A" "$AH" "${BUDGET_I:-38}" 4e-4 20 8 0.01 "$@"
stage j i "$M,$A,$mix" "$AH" "${BUDGET_J:-70}" 4e-4 20 9 0.01 "$@"
aux() {  # NAME FROM STEPS SEED: the vision tower alone (qwenvl.train.tower_aux), anchored to FROM's tokens
  local name=$1 from=$2 steps=$3 seed=$4
  [[ "$STAGES" == *$name* ]] || return 0
  last=$name
  [ -f "$OUT_DIR/$name/export/config.json" ] && return 0
  $PY -m qwenvl.train.tower_aux -m "$OUT_DIR/$from/export" --data "$D/s168/train.jsonl" --data "$D/s224/train.jsonl" \
      --data "$D/s336/train.jsonl" --data "$A" --heldout "$SH" --n-heldout 100 --out "$OUT_DIR/$name/export" \
      --steps "$steps" --seed "$seed" --lr 3e-4 --anchor 4 --head-steps 100 --eval-every 100
}
L1=$M,$D/s168/train.jsonl,$D/s224/train.jsonl
L2=$L1,$D/s336/train.jsonl,$D/g0/train.jsonl
SH=$D/s224/heldout.jsonl
stage k i "$L1" "$SH" "${BUDGET_K:-35}" 4e-4 20 10 0.01 "$@"
stage l k "$L1" "$SH" "${BUDGET_L:-24}" 3e-4 20 11 0.01 "$@"
stage n l "$L1,$D/s336/train.jsonl" "$SH" "${BUDGET_N:-28}" 3e-4 20 12 0.01 "$@"
aux p n 1850 0
stage q p "$L2" "$SH" "${BUDGET_Q:-35}" 3e-4 20 13 0.01 "$@"
aux r q 3100 1
stage s r "$L2" "$SH" "${BUDGET_S:-35}" 3e-4 20 14 frozen "$@"
stage t s "$L2,$D/g1/train.jsonl" "$SH" "${BUDGET_T:-30}" 3e-4 20 15 frozen "$@"
MX=$L1,$D/s336/train.jsonl,$mix
stage u t "$MX" "$D/heldout-c1.jsonl" "${BUDGET_U:-22}" 3e-4 20 16 frozen "$@"
stage v u "$MX" "$D/heldout-c1.jsonl" "${BUDGET_V:-35}" 2e-4 20 17 frozen "$@"
TX=$D/rt0/train.jsonl,$D/st0/train.jsonl,$D/rt1/train.jsonl,$D/v0/train.jsonl,$D/v1/train.jsonl,$D/u0/train.jsonl
TX=$TX,$D/u1/train.jsonl,$D/d01/train.jsonl,$mix,$D/s224/train.jsonl
stage w v "$TX" "$CH" "${BUDGET_W:-50}" 3e-4 20 18 frozen "$@"
stage x w "$TX" "$CH" "${BUDGET_X:-25}" 1.5e-4 20 19 frozen "$@"
# Y: X on the GPU (scripts/device_stage_y.sh; 2.2 min on an H200, 12 loader processes): 501 steps of 16,384 tokens
stage y x "$(ylist)" "$D/heldout-c1.jsonl" "${BUDGET_Y:-0}" 2e-4 20 23 frozen --max-steps 501 --pack-length 16384 \
    --eval-every 100 --set eval_max_samples=40 "$@"
# Z: Y continued on 2 CPU cores on W/X's data + 5,000 more videos (data/v2, data/v3), towers frozen, 50 min
stage z y "$TX,$D/v2/train.jsonl,$D/v3/train.jsonl" "$D/heldout-c1.jsonl" "${BUDGET_Z:-50}" 1.5e-4 20 24 frozen "$@"
# E, M: the time rungs from Z, as scripts/probes_time.sh runs them (towers frozen, no held-out loss, the config's seed)
rung() {  # NAME FROM DATA
  local name=$1 from=$2 data=$3
  [[ "$STAGES" == *$name* ]] || return 0
  last=$name
  [ -f "$OUT_DIR/$name/export/config.json" ] && return 0
  rung_train "$OUT_DIR/$from/export" "$data" "$OUT_DIR/$name" 600 5e-4
}
P=$D/probe
if [[ "$STAGES" == *e* && "$STAGES" != *z* && ! -f "$OUT_DIR/z/export/config.json" ]]; then
  # Z not trained here: take its weights as shipped in commit 7b982ed (the package's model, qwenvl/embedded)
  mkdir -p "$OUT_DIR/z/export"
  for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
    git show "7b982ed:qwenvl/embedded/$f" >"$OUT_DIR/z/export/$f" || {
      echo "error: cannot read stage Z's weights from git commit 7b982ed (a shallow clone?); run STAGES=...z... or" \
           "copy them into $OUT_DIR/z/export" >&2; exit 2; }
  done
fi
rung e z "$P/when-train.jsonl"
rung m e "$P/span-train.jsonl,$P/span_named-train.jsonl"
# O: M on Z's data + the span rungs, towers frozen, 45 min
stage o m "$TX,$D/v2/train.jsonl,$D/v3/train.jsonl,$P/span-train.jsonl,$P/span_named-train.jsonl" \
    "$D/heldout-c1.jsonl" "${BUDGET_O:-45}" 2e-4 20 25 frozen "$@"
# the earlier chain (shipped until the eleventh session; scripts/claims.sh starts from A)
stage a init "$A" "$AH" "${BUDGET_A:-40}" 1e-3 30 0 0.01 "$@"
stage b a "$mix" "$CH" "${BUDGET_B:-45}" 6e-4 30 0 0.01 "$@"
stage c b "$mix" "$CH" "${BUDGET_C:-30}" 4e-4 10 1 0.01 "$@"
stage d c "$A,$mix" "$CH" "${BUDGET_D:-80}" 4e-4 30 2 0.01 "$@"
[ -n "$last" ] || { echo "error: STAGES=$STAGES names no stage; use letters from fghijklnpqrstuvwxyzemo and abcd" >&2; exit 2; }
echo "weights: $OUT_DIR/$last/export"
