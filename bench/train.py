"""Training throughput: our packed trainer step vs transformers 4.51.3's modules on the same model and batch.

    .venv/bin/python bench/train.py                       # ~6M model (the issue's probe shape) + ~100M model
    .venv/bin/python bench/train.py --sizes 6m --steps 5  # quicker

Work per step (the probe in issue 6): 16 samples, each a 224x224 image (64 visual tokens), a short question and a
short answer (loss on the answer + <|im_end|>). Both sides start from the same random weights and take the same
optimizer step (AdamW, lr 1e-4, clip 1.0): ours packs the 16 samples into one sequence with per-sample attention
(qwenvl.train.packing); the reference pads them into a (16, T) batch and calls
Qwen2_5_VLForConditionalGeneration(..., labels=...). Timed: forward + backward + optimizer step on prepared tensors
(preprocessing is done once, before timing, for both). Reported: median seconds per step after 2 warm-up steps,
samples/s and tokens/s (real tokens, padding excluded), in fp32 and with bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenvl.tiny import build_tokenizer, tiny_config  # noqa: E402

SHAPES = {
    # ~6M parameters: the probe's scale
    "6m": dict(text=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [16, 8, 8]}),
               vision=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                           fullatt_block_indexes=[3])),
    # ~100M parameters
    "100m": dict(text=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                           num_key_value_heads=4, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}),
                 vision=dict(depth=8, hidden_size=384, intermediate_size=1024, num_heads=6, out_hidden_size=768,
                             fullatt_block_indexes=[3, 7])),
}


def make_config(tok, shape: str) -> dict:
    s = SHAPES[shape]
    cfg = tiny_config(tok, **s["text"])
    cfg["vision_config"].update(s["vision"])
    return cfg


def make_samples(vlm, n: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    from qwenvl.train.data import build_sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        msgs = [{"role": "user", "content": [{"type": "image", "image": img},
                                             {"type": "text", "text": "Where is the red circle?"}]},
                {"role": "assistant", "content": f"It is at {int(rng.integers(0, 224))}, {int(rng.integers(0, 224))}."}]
        out.append(build_sample(vlm.processor, msgs, source=f"synthetic:{i}", min_pixels=224 * 224,
                                max_pixels=224 * 224))
    return out


def time_steps(step, steps: int) -> float:
    for _ in range(2):
        step()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def profile_table(step, n: int = 2, rows: int = 25) -> str:
    """The top operators (self CPU time) of n more steps: where the step's time goes on this machine."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def ours(vlm, samples, amp: bool, steps: int, profile: bool = False):
    from qwenvl.train.packing import collate, packed_loss

    model = vlm.model.train()
    for p in model.parameters():  # qwenvl.load gives inference weights; train everything, as the reference does
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    batch = collate(samples)
    n_loss = batch.num_loss_tokens

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            s, _, _ = packed_loss(model, batch)
        (s / n_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    t = time_steps(step, steps)
    return (t, profile_table(step)) if profile else t


def reference(path, samples, amp: bool, steps: int, pad_id: int) -> float:
    from transformers import Qwen2_5_VLForConditionalGeneration

    import transformers
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa",
                                                               **{dtype_kw: torch.float32}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    T = max(s.num_tokens for s in samples)
    B = len(samples)
    ids = torch.full((B, T), pad_id)
    labels = torch.full((B, T), -100)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, s in enumerate(samples):  # left padding, as the reference processor does for batches
        n = s.num_tokens
        ids[i, T - n:] = s.input_ids
        labels[i, T - n:] = s.labels
        mask[i, T - n:] = 1
    pix = torch.cat([s.pixel_values for s in samples])
    grid = torch.cat([s.image_grid_thw for s in samples])

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pix, image_grid_thw=grid, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time_steps(step, steps)


def build_checkpoint(shape: str, d: Path) -> Path:
    """Random weights saved by the reference's own save_pretrained (both sides load the same files)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qwenvl.tiny import write_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    m = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**make_config(tok, shape)))
    m.save_pretrained(d, safe_serialization=True)
    write_tokenizer(tok, d)
    return d


def main():
    import tempfile

    import qwenvl

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="6m,100m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--modes", default="fp32,bf16")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="also write our step's top operators to stderr / --out")
    args = ap.parse_args()
    rows = []
    for shape in args.sizes.split(","):
        d = build_checkpoint(shape, Path(tempfile.mkdtemp()) / shape)
        vlm = qwenvl.load(d, dtype=torch.float32, pack=False)
        params = sum(p.numel() for p in vlm.model.parameters())
        samples = make_samples(vlm, args.batch)
        tokens = sum(s.num_tokens for s in samples)
        for mode in args.modes.split(","):
            amp = mode == "bf16"
            row = {"shape": shape, "params_m": round(params / 1e6, 2), "mode": mode, "batch": args.batch,
                   "tokens_per_step": tokens}
            vlm = qwenvl.load(d, dtype=torch.float32, pack=False)  # fresh weights and optimizer per measurement
            t = ours(vlm, samples, amp, args.steps, args.profile)
            if args.profile:
                t, table = t
                row["profile"] = table
                print(table, file=sys.stderr, flush=True)
            row.update(ours_s=t, ours_samples_s=args.batch / t, ours_tokens_s=tokens / t)
            print(f"[{shape} {mode}] ours: {t:.3f} s/step, {args.batch / t:.1f} samples/s", file=sys.stderr, flush=True)
            if not args.skip_reference:
                r = reference(d, samples, amp, args.steps, vlm.tokenizer.pad_id)
                row.update(ref_s=r, ref_samples_s=args.batch / r, ref_tokens_s=tokens / r, speedup=r / t)
                print(f"[{shape} {mode}] transformers: {r:.3f} s/step -> ours {r / t:.2f}x", file=sys.stderr,
                      flush=True)
            rows.append(row)
    print("| model | mode | ours s/step | ours samples/s | ours tokens/s | transformers 4.51.3 s/step | "
          "samples/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = (f"{r['ref_s']:.3f} | {r['ref_samples_s']:.1f} | {r['speedup']:.2f}x" if "ref_s" in r else "- | - | -")
        print(f"| {r['shape']} ({r['params_m']}M) | {r['mode']} | {r['ours_s']:.3f} | {r['ours_samples_s']:.1f} | "
              f"{r['ours_tokens_s']:.0f} | {ref} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
