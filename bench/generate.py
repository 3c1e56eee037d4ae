"""End-to-end benchmark: this project vs the current transformers release (5.x), same random-weight checkpoint.

One command builds (once, cached) a random checkpoint with the real Qwen2.5-VL-3B shape, then runs each side in
its own subprocess, one after the other (never both models in memory at once), and prints a markdown table:

- vision tower on one image at 448², 896², 1344² (random pixel_values (N, 1176), grid (1, side/14, side/14));
- time to first token: one 448×448 image + 30 text tokens (286 prompt tokens), generate 1 token (vision + prefill);
- single-stream decode tokens/s = 16 / (time for 17 new tokens − time for 1 new token), greedy, same image prompt;
- batch-8 aggregate decode tokens/s, same formula × 8, on 8 copies of a 30-token text-only prompt;
- peak RSS of each side's process (ru_maxrss) and the bytes of its weights.

Protocol (as in ../shared/spec/performance.md): load, torch.set_num_threads(2); before each measured call one
warm-up call of the same kind; then time one call, or the median of 3 when one call takes under 20 s.
For the generation rows the warm-up is one 17-token call, after which the 1-token and 17-token calls are timed.

Both sides get the same tensors (input_ids, attention_mask, pixel_values, image_grid_thw, made here and passed in a
file). Our side: `qwenvl.load` + `qwenvl.generate.generate` (greedy, stop_ids empty). The reference:
transformers 5.x `Qwen2_5_VLForConditionalGeneration` (SDPA) in its own virtualenv bench/.venv-ref (created on
first use), fed tensors directly (its image processor needs torchvision), with `mm_token_type_ids` (0 text,
1 image) so that 5.x computes MRoPE positions (reference.md §6.6, §8.2, §9.3 item 11), eos disabled so that it
generates exactly the requested tokens, like ours.

Usage:
  .venv/bin/python bench/generate.py                 # 3B shape, dtype auto
  .venv/bin/python bench/generate.py --quick         # toy shape, a smoke test in about a minute
  options: --dtype auto|bfloat16|float32, --sizes 448,896,1344, --skip-reference, --skip-ours,
           --out bench/results/generate-<date>.json, --reference-max-call-s S (skip a reference vision size whose
           estimated single call exceeds S seconds; 0 = never skip), --repeats N (timed calls per measurement),
           --new-tokens N (decode rate from t(N) - t(1); default 17), --table-from JSON (re-print a saved run)

This file is also imported by the two workers (bench/_ours_worker.py, bench/_reference_worker.py) for the shared
measurement protocol, so everything at module level uses the standard library only.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
REF_VENV = BENCH / ".venv-ref"
OURS_PY = ROOT / ".venv" / "bin" / "python"
REF_PY = REF_VENV / "bin" / "python"

TEXT_TOKENS = 30  # text tokens of each prompt (vision start/end included, image pads not)
NEW_TOKENS = 17  # decode rate = (t(17) - t(1)) / 16
DECODE_BATCH = 8
REPEAT_UNDER_S = 20.0  # a call faster than this is timed 3 times (median)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================ shared measurement protocol
def _vm_rss() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _timed(fn, label: str, repeats: int | None = None):
    """Time fn() once; if that took under REPEAT_UNDER_S, twice more and take the median. -> (median, times, out)."""
    times, out = [], None
    n = repeats or 1
    i = 0
    while i < n:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if repeats is None and i == 0 and times[0] < REPEAT_UNDER_S:
            n = 3
        i += 1
    med = statistics.median(times)
    log(f"  {label}: {med:.3f} s (times {', '.join(f'{t:.3f}' for t in times)})")
    return med, times, out


def run_worker(side: str, adapter_factory) -> None:
    """The measurement protocol, identical for both sides. `adapter_factory(ckpt, dtype)` loads the model and
    returns an object with `.weight_bytes`, `.vision(pixel_values, grid) -> (N/4, C) tensor` and
    `.generate(inputs: dict, n) -> list[list[int]]` (the n new token ids of each row)."""
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--dtype", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-vision-call-s", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    args = ap.parse_args()
    reps = args.repeats or None
    nt = args.new_tokens

    torch.set_num_threads(2)
    dtype = getattr(torch, args.dtype)
    res: dict = {"side": side, "dtype": args.dtype, "torch": torch.__version__, "threads": torch.get_num_threads()}
    inputs = torch.load(args.inputs)

    log(f"{side}: loading {args.ckpt} ({args.dtype})")
    t0 = time.perf_counter()
    m = adapter_factory(args.ckpt, dtype)
    res["load_s"] = time.perf_counter() - t0
    res["weight_bytes"] = int(m.weight_bytes)
    res["versions"] = getattr(m, "versions", {})
    res["rss_after_load"] = _vm_rss()
    log(f"{side}: loaded in {res['load_s']:.1f} s, weights {res['weight_bytes'] / 1e9:.2f} GB, "
        f"RSS {res['rss_after_load'] / 1e9:.2f} GB")

    def save():
        res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    # ---- vision tower
    res["vision"] = {}
    prev = None  # (patches, seconds)
    for v in inputs["vision"]:
        side_px, pv, grid = v["side"], v["pixel_values"].to(dtype), v["grid_thw"]
        n = pv.shape[0]
        key = str(side_px)
        if prev is not None and args.max_vision_call_s > 0:
            est = prev[1] * (n / prev[0]) ** 1.25
            if est > args.max_vision_call_s:
                log(f"{side}: vision {side_px}²: skipped, estimated {est:.0f} s per call "
                    f"> {args.max_vision_call_s:.0f} s")
                res["vision"][key] = {"patches": n, "skipped": f"estimated {est:.0f} s per call "
                                                                f"> limit {args.max_vision_call_s:.0f} s"}
                continue
        log(f"{side}: vision {side_px}² ({n} patches): warm-up")
        t0 = time.perf_counter()
        out = m.vision(pv, grid)
        warm = time.perf_counter() - t0
        log(f"  warm-up {warm:.3f} s")
        med, times, out = _timed(lambda: m.vision(pv, grid), f"vision {side_px}²", reps)
        res["vision"][key] = {"patches": n, "seconds": med, "times": times, "warmup_s": warm,
                              "out_shape": list(out.shape)}
        if v.get("save_output"):
            torch.save(out.float().clone(), Path(args.out).with_suffix(f".vision{side_px}.pt"))
        prev = (n, med)
        del out
        save()

    # ---- generation: image prompt (TTFT + single-stream decode), then text batch (aggregate decode)
    for name, inp in (("image", inputs["image_prompt"]), ("batch", inputs["batch_prompt"])):
        B = inp["input_ids"].shape[0]
        log(f"{side}: generation '{name}' (batch {B}, prompt {inp['input_ids'].shape[1]} tokens): "
            f"warm-up with {nt} new tokens")
        t0 = time.perf_counter()
        m.generate(inp, nt)
        warm = time.perf_counter() - t0
        log(f"  warm-up {warm:.3f} s")
        t1, times1, toks1 = _timed(lambda: m.generate(inp, 1), f"{name}: 1 new token", reps)
        tn, timesn, toksn = _timed(lambda: m.generate(inp, nt), f"{name}: {nt} new tokens", reps)
        bad = [len(r) for r in toksn if len(r) != nt] + [len(r) for r in toks1 if len(r) != 1]
        if bad:
            raise SystemExit(f"{side}: a row generated a wrong number of tokens ({bad}); the rate would be wrong")
        rate = (nt - 1) * B / (tn - t1)
        res[name] = {"batch": B, "prompt_tokens": int(inp["input_ids"].shape[1]), "warmup_s": warm,
                     "t1_s": t1, "t1_times": times1, "tn_s": tn, "tn_times": timesn, "new_tokens": nt,
                     "decode_tok_s": rate, "tokens": [list(map(int, r)) for r in toksn],
                     "first_token_from_1_call": [int(r[0]) for r in toks1]}
        log(f"{side}: {name}: t(1) {t1:.3f} s, t({nt}) {tn:.3f} s -> {rate:.3f} tok/s")
        save()
    save()
    log(f"{side}: done, peak RSS {res['peak_rss_bytes'] / 1e9:.2f} GB")


# ============================================================================ orchestration (our venv)
def quick_config(cfg):
    """A preset-like toy: 2 vision blocks, 2 LLM layers, hidden 256, the real vocabulary size."""
    from qwenvl.config import TextConfig, VisionConfig
    v = VisionConfig(depth=2, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=256,
                     fullatt_block_indexes=(1,), window_size=112, tokens_per_second=2)
    t = TextConfig(vocab_size=151936, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                   mrope_section=(8, 12, 12))
    return cfg.replace(vision=v, text=t)


def resolve_dtype(choice: str) -> tuple[str, str]:
    from qwenvl.device import cpu_has_fast_bf16
    fast = cpu_has_fast_bf16()
    if choice == "auto":
        if fast:
            return "bfloat16", "auto: this CPU has AVX512-BF16/AMX, so bf16 is the fast path"
        return "float32", "auto: this CPU has no AVX512-BF16/AMX (bf16 matmuls would be emulated and slower)"
    why = "forced by --dtype"
    if choice == "bfloat16" and not fast:
        why += " (warning: no AVX512-BF16/AMX here, bf16 is emulated and slow on both sides)"
    return choice, why


def checkpoint_dir(shape: str, dtype: str) -> Path:
    return CACHE / f"generate-ckpt-{shape}-{dtype}"


def ensure_checkpoint(shape: str, dtype: str) -> Path:
    d = checkpoint_dir(shape, dtype)
    if (d / ".complete").is_file():
        log(f"checkpoint: cached at {d}")
        return d
    if shape == "3b":
        import qwenvl
        need = qwenvl.preset("3b").num_parameters * (2 if dtype == "bfloat16" else 4)
        free = shutil.disk_usage(CACHE.parent if not CACHE.exists() else CACHE).free
        if free < need * 1.1 + 2e9:
            raise SystemExit(f"not enough disk for the checkpoint: need ~{need / 1e9:.1f} GB, "
                             f"{free / 1e9:.1f} GB free")
    log(f"checkpoint: writing random weights to {d} (once; cached)")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(OURS_PY), str(BENCH / "_ours_worker.py"), "build", "--dir", str(d), "--shape", shape,
                    "--dtype", dtype], check=True)
    return d


def build_inputs(ckpt: Path, sizes: list[int], path: Path) -> dict:
    """Token ids (from the checkpoint's tokenizer) and random pixel values, identical for both sides."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    cfg = json.loads((ckpt / "config.json").read_text())
    img, vs, ve = cfg["image_token_id"], cfg["vision_start_token_id"], cfg["vision_end_token_id"]

    def enc(s):
        return tok.encode(s, add_special_tokens=False).ids

    # no system turn: the toy BPE splits words finely, and the prompt must stay at TEXT_TOKENS tokens
    prefix = enc("<|im_start|>user\n")
    suffix = enc("<|im_end|>\n<|im_start|>assistant\n")
    question = enc(" ".join(["Describe this image in detail: count the stars, read all the text in the image and "
                             "locate every object."] * 3))

    def text_part(n_fixed):
        k = TEXT_TOKENS - n_fixed
        assert 0 < k <= len(question)
        return question[:k]

    g = torch.Generator().manual_seed(0)
    merge = cfg["vision_config"]["spatial_merge_size"]
    patch = cfg["vision_config"]["patch_size"]
    dim = cfg["vision_config"]["in_channels"] * cfg["vision_config"]["temporal_patch_size"] * patch * patch
    vision = []
    for i, s in enumerate(sizes):
        gh = s // patch
        grid = torch.tensor([[1, gh, gh]])
        vision.append({"side": s, "grid_thw": grid, "pixel_values": torch.randn(gh * gh, dim, generator=g),
                       "save_output": i == 0})
    # the image prompt: one 448x448 image (1024 patches, 256 merged tokens)
    gh = 448 // patch
    n_img = gh * gh // merge**2
    ids = prefix + [vs] + [img] * n_img + [ve] + text_part(len(prefix) + len(suffix) + 2) + suffix
    ids_t = torch.tensor([ids])
    image_prompt = {"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t),
                    "pixel_values": torch.randn(gh * gh, dim, generator=g),
                    "image_grid_thw": torch.tensor([[1, gh, gh]]),
                    "mm_token_type_ids": (ids_t == img).to(torch.int32)}
    tids = prefix + text_part(len(prefix) + len(suffix)) + suffix
    tids_t = torch.tensor([tids] * DECODE_BATCH)
    batch_prompt = {"input_ids": tids_t, "attention_mask": torch.ones_like(tids_t),
                    "mm_token_type_ids": torch.zeros_like(tids_t, dtype=torch.int32)}
    inputs = {"vision": vision, "image_prompt": image_prompt, "batch_prompt": batch_prompt}
    torch.save(inputs, path)
    return {"image_prompt_tokens": len(ids), "image_tokens": n_img, "text_tokens": len(ids) - n_img,
            "batch_prompt_tokens": len(tids), "batch": DECODE_BATCH}


def ensure_reference_venv() -> None:
    if REF_PY.is_file():
        r = subprocess.run([str(REF_PY), "-c", "import transformers, torch; print(transformers.__version__)"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip().split(".")[0] == "5":
            return
    log(f"reference: creating {REF_VENV} (torch 2.13.0 CPU + transformers 5.x)")
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(REF_VENV)], check=True)
    pip = [str(REF_VENV / "bin" / "pip"), "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # a pinned CPU build; plain `torch` pulls a CUDA build
    subprocess.run(pip + ["transformers>=5,<6", "safetensors", "pillow", "numpy"], check=True)


def run_side(side: str, ckpt: Path, inputs: Path, dtype: str, tmp: Path, max_vision_call_s: float,
             repeats: int, new_tokens: int) -> dict:
    py = OURS_PY if side == "ours" else REF_PY
    worker = BENCH / ("_ours_worker.py" if side == "ours" else "_reference_worker.py")
    out = tmp / f"{side}.json"
    cmd = [str(py), str(worker)] + (["run"] if side == "ours" else []) + [
        "--ckpt", str(ckpt), "--inputs", str(inputs), "--dtype", dtype, "--out", str(out),
        "--max-vision-call-s", str(max_vision_call_s), "--repeats", str(repeats), "--new-tokens", str(new_tokens)]
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{side} worker failed (exit {r.returncode})")
    res = json.loads(out.read_text())
    res["process_wall_s"] = wall
    return res


# ---------------------------------------------------------------------------- table
def _fmt_s(x):
    return "—" if x is None else (f"{x:.3f} s" if x < 10 else f"{x:.2f} s")


def _fmt_r(x):
    return "—" if x is None else f"{x:.2f} tok/s"


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _get(d, *keys):
    for k in keys:
        if d is None or k not in d:
            return None
        d = d[k]
    return d


def make_table(ours: dict | None, ref: dict | None, meta: dict) -> str:
    rows = []  # (what, ours, ref, ratio)
    notes = []
    for s in meta["sizes"]:
        k = str(s)
        o, r = _get(ours, "vision", k, "seconds"), _get(ref, "vision", k, "seconds")
        n = _get(ours, "vision", k, "patches") or _get(ref, "vision", k, "patches")
        rcell = _fmt_s(r)
        skipped = _get(ref, "vision", k, "skipped") or _get(ours, "vision", k, "skipped")
        if skipped:
            rcell = "skipped"
            notes.append(f"vision {s}²: {skipped}")
        rows.append((f"vision encode {s}×{s} ({n} patches)", _fmt_s(o), rcell, _ratio(r, o)))
    ip = meta["inputs"]
    o, r = _get(ours, "image", "t1_s"), _get(ref, "image", "t1_s")
    rows.append((f"time to first token (448² image + {ip['text_tokens']} text = "
                 f"{ip['image_prompt_tokens']} tokens)",
                 _fmt_s(o), _fmt_s(r), _ratio(r, o)))
    o, r = _get(ours, "image", "decode_tok_s"), _get(ref, "image", "decode_tok_s")
    rows.append(("decode, single stream (image prompt)", _fmt_r(o), _fmt_r(r), _ratio(o, r)))
    o, r = _get(ours, "batch", "decode_tok_s"), _get(ref, "batch", "decode_tok_s")
    rows.append((f"decode, batch {ip['batch']} aggregate (text-only {ip['batch_prompt_tokens']}-token prompt)",
                 _fmt_r(o), _fmt_r(r), _ratio(o, r)))
    o, r = _get(ours, "peak_rss_bytes"), _get(ref, "peak_rss_bytes")
    rows.append(("peak RSS of the process", "—" if o is None else f"{o / 2**30:.2f} GiB",
                 "—" if r is None else f"{r / 2**30:.2f} GiB", _ratio(r, o)))
    o, r = _get(ours, "weight_bytes"), _get(ref, "weight_bytes")
    rows.append(("weight bytes", "—" if o is None else f"{o / 1e9:.3f} GB",
                 "—" if r is None else f"{r / 1e9:.3f} GB", _ratio(r, o)))
    o, r = _get(ours, "load_s"), _get(ref, "load_s")
    rows.append(("load time (from disk)", _fmt_s(o), _fmt_s(r), _ratio(r, o)))

    ref_name = f"transformers {_get(ref, 'versions', 'transformers') or '5.x'}"
    lines = [f"| what | qwenvl (ours) | {ref_name} | ratio (>1 = ours better) |", "|---|---|---|---|"]
    for what, o, r, q in rows:
        lines.append(f"| {what} | {o} | {r} | {'—' if q is None else f'{q:.2f}×'} |")
    nt, reps = meta.get("new_tokens", NEW_TOKENS), meta.get("repeats", 0)
    how = ("one call" if reps == 1 else f"the median of {reps} calls" if reps else
           f"the median of 3 calls when one call took under {REPEAT_UNDER_S:.0f} s, else one call")
    notes.append(f"times: after one warm-up call, {how}; decode rate = (t({nt} new tokens) − t(1)) / {nt - 1} "
                 "× batch, greedy, no stop token")
    if ref is not None:
        notes.append("peak RSS: ru_maxrss of each side's own process; the reference memory-maps the safetensors, so "
                     "its weights count as file-backed pages once touched, ours are anonymous memory")
    tk = meta.get("token_check")
    if tk:
        notes.append(tk)
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def compare_tokens(ours: dict, ref: dict, tmp: Path, first_size: int) -> tuple[str, dict]:
    import torch
    out = {}
    a, b = ours["image"]["tokens"][0], ref["image"]["tokens"][0]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    out["image_prompt_tokens_equal_prefix"] = same
    ba, bb = ours["batch"]["tokens"], ref["batch"]["tokens"]
    out["batch_rows_identical"] = sum(x == y for x, y in zip(ba, bb))
    fa, fb = tmp / f"ours.vision{first_size}.pt", tmp / f"reference.vision{first_size}.pt"
    if fa.is_file() and fb.is_file():
        va, vb = torch.load(fa), torch.load(fb)
        out["vision_max_abs_diff"] = float((va - vb).abs().max())
        out["vision_max_abs"] = float(vb.abs().max())
    msg = (f"greedy tokens, image prompt: the first {same} of {len(a)} agree between the two sides; batch rows "
           f"identical: {out['batch_rows_identical']}/{len(ba)}")
    if "vision_max_abs_diff" in out:
        msg += (f"; vision output at {first_size}²: max |ours − reference| = {out['vision_max_abs_diff']:.2e} "
                f"(max |value| {out['vision_max_abs']:.2e})")
    return msg, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    ap.add_argument("--sizes", default="448,896,1344")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--quick", action="store_true", help="toy shape (2 vision blocks, 2 LLM layers, hidden 256)")
    ap.add_argument("--out", default=None,
                    help="JSON with all raw numbers (default bench/results/generate-<date>.json)")
    ap.add_argument("--reference-max-call-s", type=float, default=0.0,
                    help="skip a reference vision size whose estimated single call exceeds this (0 = never)")
    ap.add_argument("--repeats", type=int, default=0,
                    help="timed calls per measurement (median); 0 = 3 when a call takes under 20 s, else 1")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                    help="decode rate = (t(N new tokens) - t(1)) / (N - 1); default 17")
    ap.add_argument("--table-from", metavar="JSON", help="only print the table of an earlier run's JSON")
    args = ap.parse_args()
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        print(f"$ {saved['command']}\n")
        print(_header(saved) + "\n")
        print(make_table(saved.get("ours"), saved.get("reference"), saved))
        return
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2")
    if args.skip_reference and args.skip_ours:
        ap.error("nothing to run: both sides skipped")
    py = Path(sys.executable)
    cmdline = " ".join([py.relative_to(ROOT).as_posix() if py.is_relative_to(ROOT) else sys.executable,
                        Path(sys.argv[0]).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]])
    if not OURS_PY.is_file():
        raise SystemExit(f"{OURS_PY} not found: create the project's virtualenv first")
    if Path(sys.prefix).resolve() != OURS_PY.parent.parent.resolve():  # not in the project's venv: re-run there
        os.execv(str(OURS_PY), [str(OURS_PY), str(Path(__file__).resolve()), *sys.argv[1:]])

    import torch
    torch.set_num_threads(2)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(s % 28 for s in sizes):
        raise SystemExit("--sizes must be multiples of 28")
    dtype, why = resolve_dtype(args.dtype)
    shape = "quick" if args.quick else "3b"
    log(f"dtype {dtype} ({why}); shape {shape}")
    started = _dt.datetime.now()
    ckpt = ensure_checkpoint(shape, dtype)
    if not args.skip_reference:
        ensure_reference_venv()
    results: dict = {"command": cmdline, "started": started.isoformat(timespec="seconds"), "dtype": dtype,
                     "dtype_reason": why, "shape": shape, "sizes": sizes,
                     "repeats": args.repeats, "new_tokens": args.new_tokens, "checkpoint": str(ckpt.relative_to(ROOT)),
                     "cpu": _cpu_name(), "protocol": __doc__.split("Protocol")[1].split("\n\n")[0].strip()}
    with tempfile.TemporaryDirectory(prefix="qwenvl-bench-") as td:
        tmp = Path(td)
        inputs = tmp / "inputs.pt"
        results["inputs"] = build_inputs(ckpt, sizes, inputs)
        log(f"inputs: {results['inputs']}")
        ours = ref = None
        if not args.skip_ours:
            ours = results["ours"] = run_side("ours", ckpt, inputs, dtype, tmp, 0.0, args.repeats, args.new_tokens)
        if not args.skip_reference:
            ref = results["reference"] = run_side("reference", ckpt, inputs, dtype, tmp, args.reference_max_call_s,
                                                  args.repeats, args.new_tokens)
        if ours and ref:
            msg, check = compare_tokens(ours, ref, tmp, sizes[0])
            results["token_check"] = msg
            results["agreement"] = check
            log(msg)
    results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    name = f"generate-{started:%Y-%m-%d}{'-quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else BENCH / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    table = make_table(ours, ref, results)
    print(f"$ {cmdline}\n")
    print(_header(results) + "\n")
    print(table)
    print(f"\nraw numbers: {out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out}")


def _header(r: dict) -> str:
    return (f"dtype: {r['dtype']} ({r['dtype_reason']}); shape: "
            f"{'Qwen2.5-VL-3B' if r['shape'] == '3b' else 'toy (--quick)'}, random weights; {r['cpu']}; 2 threads")


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
