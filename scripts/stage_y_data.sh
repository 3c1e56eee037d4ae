# Stage Y's data: stage W/X's families at ~1.5x with new seeds (43,700 records under $D/y). Sourced by
# scripts/train_embedded.sh and scripts/device_stage_y.sh, which define D (the data folder) and
# `build OUT SPLIT CURRICULUM TASKS N SEED [more build args]`.
YSETS=(rt0 st0 rt1 v0 v1 u0 u1 d01 g0 g1 o0 o1 t0 t1 s224)
ydata() {
  build "$D/y/rt0" train 0 read_text 4500 141
  build "$D/y/st0" train 0 spot_text 2200 142
  build "$D/y/rt1" train 1 read_text,spot_text,key_values 1500 143
  build "$D/y/v0" train 0 video_grounding 3700 144
  build "$D/y/v1" train 1 video_grounding 2200 145
  build "$D/y/u0" train 0 computer_use 2200 146
  build "$D/y/u1" train 1 computer_use 1500 147
  build "$D/y/d01" train 1 document 900 148
  build "$D/y/g0" train 0 grounding 1500 111
  build "$D/y/g1" train 1 grounding 1500 112
  build "$D/y/o0" train 0 documents,gui 300 113
  build "$D/y/o1" train 1 documents,gui 300 114
  build "$D/y/t0" train 0 text,video 100 115
  build "$D/y/t1" train 1 text,video 100 116
  build "$D/y/s224" train 1 grounding 2000 124 --max-side 224
}
ylist() {  # the training files, comma-separated
  local out= s
  for s in "${YSETS[@]}"; do out=$out${out:+,}$D/y/$s/train.jsonl; done
  echo "$out"
}
