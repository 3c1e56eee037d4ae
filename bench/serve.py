"""Server throughput: 32 concurrent clients vs the same 32 requests sent one after another, on loopback.

One command builds (once, cached under bench/.cache) a random-weight checkpoint, starts `qwenvl serve` in its own
process, and sends a fixed mix of requests (one third each: a 224x224 image, a 4-frame video as comma-joined
base64 JPEGs, text only), every request generating exactly --tokens tokens (ignore_eos) with greedy decoding.

- sequential: one client, the 32 requests one after another (what a server without batching does at best);
- concurrent: 32 clients at once (the scheduler prefills each on arrival and decodes them together).

Aggregate tokens/s = generated tokens / wall time of the phase. Also reported: the median and max request
latency, and the server's resident memory (VmRSS) after each phase and its peak (VmHWM).

Usage:
  .venv/bin/python bench/serve.py                 # mid-size random model (hidden 512, 8 layers), 32 tokens
  .venv/bin/python bench/serve.py --quick         # the tiny test model, 8 tokens
  options: --clients N (32), --tokens N, --max-batch N (32), --out bench/results/serve-<date>.json
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
PY = ROOT / ".venv" / "bin" / "python"


def build_checkpoint(quick: bool) -> Path:
    """The tiny test checkpoint (--quick) or a mid-size one: the real architecture at hidden 512, 8 layers."""
    sys.path.insert(0, str(ROOT))
    import torch

    from qwenvl.config import QwenVLConfig
    from qwenvl.model.qwenvl import QwenVL
    from qwenvl.tiny import build_tokenizer, make_random_checkpoint, randomize_, tiny_config, write_tokenizer
    from qwenvl.weights import save_model

    path = CACHE / ("serve-tiny" if quick else "serve-mid")
    if (path / "config.json").is_file():
        return path
    if quick:
        return make_random_checkpoint(path)
    tok = build_tokenizer()
    write_tokenizer(tok, path)
    cfg = tiny_config(tok, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
    cfg["vision_config"] = dict(cfg["vision_config"], out_hidden_size=512, depth=4, hidden_size=128,
                                intermediate_size=256, fullatt_block_indexes=[1, 3])
    model = QwenVL(QwenVLConfig.from_hf(cfg))
    randomize_(model, seed=0, std=0.04)
    save_model(model.to(torch.float32), path)
    (path / "generation_config.json").write_text(json.dumps({"do_sample": False, "eos_token_id": [
        tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]}))
    return path


def requests_mix(n: int, tokens: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    def enc(img, fmt):
        buf = io.BytesIO()
        img.save(buf, fmt)
        return base64.b64encode(buf.getvalue()).decode()

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 3 == 0:
            img = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
            content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + enc(img, "PNG")}},
                       {"type": "text", "text": f"Describe picture {i}."}]
        elif i % 3 == 1:
            frames = [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(4)]
            url = "data:video/jpeg;base64," + ",".join(enc(f, "JPEG") for f in frames)
            content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]
        else:
            content = f"Tell me story number {i} about red circles and blue squares."
        out.append({"model": "bench", "messages": [{"role": "user", "content": content}], "max_tokens": tokens,
                    "temperature": 0, "ignore_eos": True})
    return out


def post(url: str, body: dict) -> tuple[int, int, float]:
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    dt = time.perf_counter() - t0
    toks = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
    return r.status_code, toks, dt


def phase(url: str, bodies: list[dict], concurrent: bool) -> dict:
    results: list = [None] * len(bodies)
    t0 = time.perf_counter()
    if concurrent:
        barrier = threading.Barrier(len(bodies))

        def run(i):
            barrier.wait()
            results[i] = post(url, bodies[i])
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, b in enumerate(bodies):
            results[i] = post(url, b)
    wall = time.perf_counter() - t0
    statuses = sorted({r[0] for r in results})
    toks = sum(r[1] for r in results)
    lat = [r[2] for r in results]
    return {"wall_s": wall, "tokens": toks, "tokens_per_s": toks / wall, "statuses": statuses,
            "latency_median_s": statistics.median(lat), "latency_max_s": max(lat)}


def rss_mb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    tokens = a.tokens or (8 if a.quick else 32)
    ckpt = build_checkpoint(a.quick)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}"
    log = open(CACHE / "serve-bench.log", "w")
    proc = subprocess.Popen([str(PY), "-m", "qwenvl", "serve", "-m", str(ckpt), "--port", str(port),
                             "--served-model-name", "bench", "--max-batch", str(a.max_batch), "--max-queue", "256",
                             "--log-level", "warning"], stdout=log, stderr=log, cwd=ROOT)
    try:
        import httpx
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        bodies = requests_mix(a.clients, tokens)
        for b in bodies[:3]:  # warm-up: one of each kind
            post(url, {**b, "max_tokens": 2})
        seq = phase(url, bodies, concurrent=False)
        seq["rss_mb"] = rss_mb(proc.pid)
        conc = phase(url, bodies, concurrent=True)
        conc["rss_mb"] = rss_mb(proc.pid)
        conc["peak_batch"] = httpx.get(url + "/health").json()["peak_batch"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    res = {"date": _dt.date.today().isoformat(), "model": ckpt.name, "clients": a.clients, "tokens": tokens,
           "max_batch": a.max_batch, "sequential": seq, "concurrent": conc,
           "speedup": conc["tokens_per_s"] / seq["tokens_per_s"], "cpu_count": os.cpu_count()}
    out = Path(a.out or ROOT / "bench" / "results" / f"serve-{res['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("| phase | wall s | tokens | tokens/s | median latency s | max latency s | server RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("sequential (1 client)", seq), (f"concurrent ({a.clients} clients)", conc)):
        print(f"| {name} | {r['wall_s']:.2f} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['latency_median_s']:.2f} | "
              f"{r['latency_max_s']:.2f} | {r['rss_mb']['VmRSS']:.0f} |")
    print(f"\naggregate speed-up {res['speedup']:.2f}x (peak batch {conc['peak_batch']}, server peak RSS "
          f"{conc['rss_mb']['VmHWM']:.0f} MB); statuses {seq['statuses']} / {conc['statuses']}; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
