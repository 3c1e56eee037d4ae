"""Worker of bench/generate.py for this project (runs in .venv).

  build --dir D --shape 3b|quick --dtype T   write the shared random checkpoint (HF layout, our saver)
  run --ckpt D --inputs F --dtype T --out J  the measurement protocol of bench/generate.py on our model
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generate as bench  # noqa: E402  (bench/generate.py: the shared protocol)


def build(argv) -> None:
    import argparse

    import qwenvl
    from qwenvl.model.qwenvl import QwenVL
    from qwenvl.tiny import build_tokenizer, write_tokenizer
    from qwenvl.weights import save_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--shape", required=True, choices=["3b", "quick"])
    ap.add_argument("--dtype", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / ".complete").unlink(missing_ok=True)
    tok = build_tokenizer()
    write_tokenizer(tok, d)
    ids = {t: tok.token_to_id(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                                           "<|im_end|>", "<|endoftext|>")}
    cfg = qwenvl.preset("3b")
    if a.shape == "quick":
        cfg = bench.quick_config(cfg)
    # the real shapes with the tiny tokenizer's special ids (ids only need to be < vocab_size)
    cfg = cfg.replace(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                      vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                      torch_dtype=a.dtype)
    with torch.device("meta"):
        m = QwenVL(cfg).to(getattr(torch, a.dtype))  # cast on meta: no second full copy in memory
    m.to_empty(device="cpu")
    m.tie_weights()  # to_empty gives tied parameters separate storage
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight") \
                    or name.endswith("ln_q.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    bench.log(f"build: {sum(p.numel() for p in m.parameters()) / 1e9:.3f} B parameters, saving to {d}")
    save_model(m, d, max_shard_bytes=2 * 1024**3)  # small shards: less extra memory while serialising
    (d / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
         "do_sample": False}, indent=2) + "\n")
    (d / ".complete").write_text("ok\n")
    bench.log("build: done")


class Ours:
    def __init__(self, ckpt, dtype):
        import qwenvl
        self.vlm = qwenvl.load(ckpt, dtype=dtype, device="cpu")
        self.dtype = dtype
        from qwenvl.model.packed import weight_bytes
        self.weight_bytes = weight_bytes(self.vlm.model)  # packed linears included
        self.versions = {"qwenvl": qwenvl.__version__, "torch": torch.__version__}

    def vision(self, pixel_values, grid_thw):
        with torch.inference_mode():
            return self.vlm.model.visual(pixel_values.to(self.dtype), grid_thw)

    def generate(self, inp, n):
        import qwenvl
        from qwenvl.generate import generate
        from qwenvl.sampling import SamplingParams

        batch = qwenvl.Batch(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                             pixel_values=inp.get("pixel_values"), image_grid_thw=inp.get("image_grid_thw"))
        B = batch.batch_size
        out = generate(self.vlm.model, self.vlm.tokenizer, batch, [SamplingParams(max_new_tokens=n)] * B,
                       stop_ids=set())
        return [g.token_ids for g in out]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "build":
        build(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "run":
        sys.argv = [sys.argv[0]] + sys.argv[2:]
        bench.run_worker("ours", Ours)
    else:
        raise SystemExit(__doc__)
