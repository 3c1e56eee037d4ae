"""Window versus full attention in the vision tower: cost as the image grows (issue 7, item 6, the cost half).

    .venv/bin/python bench/vision_window.py [--model DIR] [--sizes 224,448,896,1344] [--repeat 3]

The same weights run twice per size: as configured (112-px windows, full attention only in the
`fullatt_block_indexes` blocks) and with every block attending over the whole image (the Qwen2-VL design).
Reported: median forward seconds of the vision tower (patches -> merged tokens) and the ratio. Default model: the
embedded one."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import qwenvl

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", default="224,448,896,1344")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    vlm = qwenvl.load(args.model, dtype=torch.float32, pack=False)
    vis = vlm.model.visual
    c = vis.cfg
    configured = frozenset(c.fullatt_block_indexes)
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        g = side // c.patch_size
        grid = torch.tensor([[1, g, g]])
        pix = torch.randn(g * g, c.patch_dim)
        res = {}
        for name, full in (("window", configured), ("full", frozenset(range(len(vis.blocks))))):
            vis.fullatt = full
            vis._plans.clear()
            ts = []
            with torch.inference_mode():
                vis(pix, grid)  # warm-up (and the plan)
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    vis(pix, grid)
                    ts.append(time.perf_counter() - t)
            res[name] = statistics.median(ts)
        vis.fullatt = configured
        rows.append((side, g * g, res["window"], res["full"]))
        print(f"{side}px: window {res['window']:.3f}s full {res['full']:.3f}s", file=sys.stderr, flush=True)
    print("| image | patches | window attention s | full attention s | full / window |")
    print("|---|---|---|---|---|")
    for side, n, w, f in rows:
        print(f"| {side}×{side} | {n:,} | {w:.3f} | {f:.3f} | {f / w:.2f}× |")


if __name__ == "__main__":
    main()
