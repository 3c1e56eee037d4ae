"""CUDA check and benchmark: correctness of the CUDA path, then speed against transformers on the same GPU.

Run on a machine with a GPU (the project's CI has none, so these checks live here, not in the test suite):

    python bench/cuda_check.py --out results.json            # tiny-model checks + 3B-shape benchmark
    python bench/cuda_check.py --quick                       # checks + a toy-shape benchmark (also runs on CPU)

1. Correctness (tiny random checkpoint, fp32, TF32 off): CUDA logits vs CPU logits (the CPU path is proven equal
   to transformers 4.51.3 by the test suite) for text, image, a frame-list video and a left-padded batch; greedy
   tokens of a batch of 3 conversations on CUDA = CPU; bf16 CUDA logits error vs fp32.
2. Speed (random weights with the real Qwen2.5-VL-3B shape, bf16, SDPA): vision encode at 448², 896², 1344²;
   time to first token (448² image + 30 text tokens); single-stream decode tokens/s; batch-8 aggregate; peak GPU
   memory. The reference (transformers installed there, SDPA) loads the same weights from a saved checkpoint and
   is measured with the same protocol when it is importable.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qwenvl  # noqa: E402
from qwenvl.generate import generate  # noqa: E402
from qwenvl.sampling import SamplingParams  # noqa: E402


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(dev):
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats=3):
    fn()  # warm-up
    sync(dev)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# --------------------------------------------------------------------------------------------- correctness
def conversations():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    frames = [Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)) for _ in range(4)]
    return [
        [{"role": "user", "content": "Count to ten, please."}],
        [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What is this?"}]}],
        [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0},
                                      {"type": "text", "text": "What happens?"}]}],
    ]


def check_correctness(dev, report):
    from qwenvl.tiny import make_random_checkpoint

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d = Path(tempfile.mkdtemp()) / "tiny"
    make_random_checkpoint(d, seed=0)
    cpu = qwenvl.load(d, dtype=torch.float32, device="cpu")
    gpu = qwenvl.load(d, dtype=torch.float32, device=dev)
    convs = conversations()
    res = {}
    for name, msgs in (("text", convs[0]), ("image", convs[1]), ("video_frames", convs[2]), ("batch3", convs)):
        b = cpu.processor(msgs)
        a = cpu.forward(b).float()
        g = gpu.forward(b).float().cpu()
        m = b.attention_mask.bool()
        res[name] = (a[m] - g[m]).abs().max().item()
    report["fp32_logits_max_abs_diff_cuda_vs_cpu"] = res
    ga = cpu.generate(convs, max_new_tokens=32)
    gb = gpu.generate(convs, max_new_tokens=32)
    report["greedy_batch3_cuda_equals_cpu"] = [x.token_ids == y.token_ids for x, y in zip(ga, gb)]
    solo = [gpu.generate(c, max_new_tokens=32).token_ids for c in convs]
    report["greedy_batch3_rows_equal_solo_on_cuda"] = [x.token_ids == s for x, s in zip(gb, solo)]
    b = gpu.processor(convs)
    params = [SamplingParams(max_new_tokens=n) for n in (32, 9, 21)]  # rows leave the batch at different steps
    eager = generate(gpu.model, gpu.tokenizer, b, params, set(), decode="eager")
    static = generate(gpu.model, gpu.tokenizer, b, params, set(), decode="static")
    report["static_decode_tokens_equal_eager"] = [x.token_ids == y.token_ids for x, y in zip(eager, static)]
    if torch.device(dev).type == "cuda":
        graph = generate(gpu.model, gpu.tokenizer, b, params, set(), decode="graph")
        report["cuda_graph_tokens_equal_eager"] = [x.token_ids == y.token_ids for x, y in zip(eager, graph)]
    bf = qwenvl.load(d, dtype=torch.bfloat16, device=dev)
    b = cpu.processor(convs)
    a = cpu.forward(b).float()
    m = b.attention_mask.bool()
    report["bf16_cuda_logits_max_abs_err_vs_fp32"] = (bf.forward(b).float().cpu()[m] - a[m]).abs().max().item()
    report["logit_scale"] = a[m].abs().max().item()
    ok = all(v <= 1e-4 for v in res.values()) and all(report["greedy_batch3_cuda_equals_cpu"]) \
        and all(report["greedy_batch3_rows_equal_solo_on_cuda"]) and all(report["static_decode_tokens_equal_eager"]) \
        and all(report.get("cuda_graph_tokens_equal_eager", [True]))
    report["correctness_ok"] = ok
    log(f"correctness: {json.dumps({k: report[k] for k in report if k != 'speed'})}")
    del cpu, gpu, bf
    gc.collect()


# --------------------------------------------------------------------------------------------- speed
def speed_inputs(cfg, tok, side=448, text_tokens=30, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor([[1, side // 14, side // 14]])
    n_img = int(grid.prod()) // 4
    ids_text = torch.randint(200, 5000, (text_tokens,), generator=g)
    ids = torch.cat([torch.tensor([cfg.vision_start_token_id]), torch.full((n_img,), cfg.image_token_id),
                     torch.tensor([tok.special_ids["<|vision_end|>"]]), ids_text]).view(1, -1)
    pix = torch.randn(int(grid.prod()), cfg.vision.patch_dim, generator=g)
    text = torch.randint(200, 5000, (batch, text_tokens), generator=g)
    return dict(input_ids=ids, pixel_values=pix, image_grid_thw=grid), dict(input_ids=text)


def measure(name, vision_fn, gen_fn, sizes, img_inp, txt_inp, dev, new_tokens, cfg):
    """Vision per size (skipped when vision_fn is None), TTFT, decode tokens/s, batch-8 tokens/s."""
    out = {}
    sizes = sizes if vision_fn is not None else []
    for side in sizes:
        grid = torch.tensor([[1, side // 14, side // 14]])
        pix = torch.randn(int(grid.prod()), cfg.vision.patch_dim)
        out[f"vision_{side}_s"] = timed(lambda: vision_fn(pix, grid), dev)
        log(f"{name}: vision {side}²: {out[f'vision_{side}_s']:.4f} s")
    t1 = timed(lambda: gen_fn(img_inp, 1), dev)
    tn = timed(lambda: gen_fn(img_inp, new_tokens), dev)
    out["ttft_s"] = t1
    out["decode_tok_s"] = (new_tokens - 1) / (tn - t1)
    b1 = timed(lambda: gen_fn(txt_inp, 1), dev)
    bn = timed(lambda: gen_fn(txt_inp, new_tokens), dev)
    out["batch8_tok_s"] = txt_inp["input_ids"].shape[0] * (new_tokens - 1) / (bn - b1)
    out["tokens"] = gen_fn(img_inp, 16)[0][:16]
    if torch.device(dev).type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    log(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'tokens'})}")
    return out


def check_speed(dev, report, quick, dtype):
    from qwenvl.config import QwenVLConfig, preset
    from qwenvl.tiny import build_tokenizer, write_tokenizer
    from qwenvl.tokenizer import Tokenizer
    from qwenvl.weights import save_model

    d = Path(tempfile.mkdtemp()) / "ckpt"
    d.mkdir(parents=True)
    write_tokenizer(build_tokenizer(), d)
    tok = Tokenizer.from_dir(d)
    base = preset("3b")
    hf = base.to_hf()
    for k, t in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                 ("vision_start_token_id", "<|vision_start|>"), ("bos_token_id", "<|endoftext|>"),
                 ("eos_token_id", "<|im_end|>")):
        hf[k] = tok.special_ids[t]
    if quick:
        hf.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
        hf["vision_config"].update(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                                   fullatt_block_indexes=[1])
        hf["rope_scaling"] = {"type": "mrope", "mrope_section": [8, 12, 12]}
    (d / "config.json").write_text(json.dumps(hf))
    cfg = QwenVLConfig.from_file(d)
    from qwenvl.model.qwenvl import QwenVL
    with torch.device("meta"):
        m = QwenVL(cfg)
    m = m.to_empty(device=dev).to(dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("ln_q.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    m.tie_weights()
    save_model(m, d)
    del m
    gc.collect()
    sizes = [448] if quick else [448, 896, 1344]
    new_tokens = 17 if quick else 65
    img_inp, txt_inp = speed_inputs(cfg, tok)
    speed = report.setdefault("speed", {"dtype": str(dtype), "shape": "toy" if quick else "3b",
                                        "new_tokens": new_tokens})

    vlm = qwenvl.load(d, dtype=dtype, device=dev)

    def our_gen(inp, n, decode="auto"):
        b = qwenvl.Batch(input_ids=inp["input_ids"], attention_mask=torch.ones_like(inp["input_ids"]),
                         pixel_values=inp.get("pixel_values"), image_grid_thw=inp.get("image_grid_thw"))
        out = generate(vlm.model, vlm.tokenizer, b, [SamplingParams(max_new_tokens=n)] * b.batch_size, set(),
                       decode=decode)
        return [g.token_ids for g in out]

    def our_vision(pix, grid):
        with torch.inference_mode():
            return vlm.model.visual(pix.to(dev, dtype), grid)

    if torch.device(dev).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    speed["ours"] = measure("ours", our_vision, our_gen, sizes, img_inp, txt_inp, dev, new_tokens, cfg)
    if torch.device(dev).type == "cuda":  # the same without CUDA graphs, to show what they buy
        speed["ours_eager_decode"] = measure("ours (eager decode)", None, lambda i, n: our_gen(i, n, "eager"), sizes,
                                             img_inp, txt_inp, dev, new_tokens, cfg)
    vlm = None  # noqa: F841  (free the GPU memory before the reference loads)
    gc.collect()
    if torch.device(dev).type == "cuda":
        torch.cuda.empty_cache()
    try:
        import transformers
        from transformers import Qwen2_5_VLForConditionalGeneration
    except ImportError as e:
        speed["reference"] = f"not importable: {e}"
        return
    transformers.logging.set_verbosity_error()
    major = int(transformers.__version__.split(".")[0])
    kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, attn_implementation="sdpa", **kw).to(dev)
    ref.eval()
    ref.generation_config.eos_token_id = None

    def ref_gen(inp, n):
        ids = inp["input_ids"].to(dev)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
        if inp.get("pixel_values") is not None:
            kw.update(pixel_values=inp["pixel_values"].to(dev, dtype), image_grid_thw=inp["image_grid_thw"].to(dev))
        if major >= 5:  # 5.x computes MRoPE positions only when given the token types (reference.md §8.2)
            kw["mm_token_type_ids"] = (ids == cfg.image_token_id).long()
        with torch.inference_mode():
            seq = ref.generate(**kw, max_new_tokens=n, min_new_tokens=0, do_sample=False)
        return seq[:, ids.shape[1]:].tolist()

    visual = getattr(ref.model, "visual", None) or ref.visual  # 5.x: model.visual; 4.x: visual

    def ref_vision(pix, grid):
        with torch.inference_mode():
            return visual(pix.to(dev, dtype), grid_thw=grid.to(dev))

    if torch.device(dev).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    speed["reference"] = measure(f"transformers {transformers.__version__}", ref_vision, ref_gen, sizes, img_inp,
                                 txt_inp, dev, new_tokens, cfg)
    speed["reference_version"] = transformers.__version__
    o, r = speed["ours"], speed["reference"]
    speed["ratios"] = {k: (o[k] / r[k] if k.endswith("tok_s") else r[k] / o[k]) for k in o
                       if k in r and isinstance(o[k], float) and not k.startswith("peak")}
    speed["first_16_greedy_tokens_agree"] = sum(a == b for a, b in zip(o["tokens"], r["tokens"]))
    log(f"ratios (>1 = ours better): {json.dumps(speed['ratios'])}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="toy shape for the speed part")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__}
    check_correctness(args.device, report)
    if not args.skip_speed:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        check_speed(args.device, report, args.quick, dtype)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
