"""Copy a trainer export as one bf16 `model.safetensors` + its config and tokenizer files (what comes back from a
GPU machine under the return limit; scripts/device_embedded.sh, scripts/device_stage_y.sh).

    python scripts/export_bf16.py RUN/export DST [--metrics RUN/metrics.jsonl]"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="HF checkpoint directory written by the trainer")
    ap.add_argument("dst")
    ap.add_argument("--metrics", help="a metrics.jsonl to copy beside the weights")
    args = ap.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    if not (src / "config.json").is_file():
        print(f"error: {src} has no config.json (no export there)", file=sys.stderr)
        return 1
    dst.mkdir(parents=True, exist_ok=True)
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, dst / "model.safetensors",
              metadata={"format": "pt"})
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and "index" not in f.name:
            shutil.copy(f, dst / f.name)
    if args.metrics:
        shutil.copy(args.metrics, dst / "metrics.jsonl")
    print(f"{src} -> {dst}: {len(state)} tensors, bf16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
