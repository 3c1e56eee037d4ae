"""Put a trained checkpoint into the package as the embedded default model (qwenvl/embedded/).

    .venv/bin/python scripts/ship_embedded.py runs/embedded/b/export --heldout runs/embedded/data/heldout-c1.jsonl --objects 2

Writes bf16 `model.safetensors` (HF names), config.json (torch_dtype bfloat16), generation_config.json and the
tokenizer files, and the bundled example: the first held-out `count` record with `--objects` shapes
(example.png + example.json with its objects in the picture's own pixels)."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DST = Path(__file__).resolve().parent.parent / "qwenvl" / "embedded"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", help="HF checkpoint directory written by the trainer")
    ap.add_argument("--heldout", required=True, help="held-out JSONL of qwenvl.synth records")
    ap.add_argument("--objects", type=int, default=3, help="how many shapes the example picture shows")
    ap.add_argument("--index", type=int, default=0, help="take the N-th such record")
    ap.add_argument("--task", default="count", help="task of the example record (default count)")
    args = ap.parse_args()
    src = Path(args.export)
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, DST / "model.safetensors",
              metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (DST / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, DST / name)
    held = Path(args.heldout)
    recs = [json.loads(x) for x in held.read_text().splitlines()]
    picks = [r for r in recs if r["meta"]["task"] == args.task and len(r["meta"]["objects"]) == args.objects]
    rec = picks[args.index]
    image = next(p["image"] for p in rec["messages"][0]["content"] if p.get("type") == "image")
    shutil.copy(held.parent / image, DST / "example.png")
    objects = [{"label": o["label"], "box": o["box"]} for o in rec["meta"]["objects"]]
    example = {"source": rec["meta"]["id"], "objects": objects,
               # the pixel limits the record was made for (the demo asks the processor for the same frame)
               "min_pixels": rec["meta"]["min_pixels"], "max_pixels": rec["meta"]["max_pixels"]}
    (DST / "example.json").write_text(json.dumps(example, indent=1) + "\n")
    (DST / "model.safetensors").chmod(0o644)
    size = (DST / "model.safetensors").stat().st_size
    print(f"shipped {src} -> {DST} ({size / 1e6:.1f} MB bf16), example {rec['meta']['id']}")


if __name__ == "__main__":
    main()
