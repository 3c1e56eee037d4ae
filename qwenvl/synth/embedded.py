"""Preparing the embedded default model: synthetic data, its tokenizer, and a from-scratch checkpoint.

    python -m qwenvl.synth.embedded prepare --out runs/embedded --n-train 20000 --n-heldout 200
    qwenvl train --config configs/embedded.yaml

`prepare` writes `data/train-c<L>.jsonl` + `data/heldout-c<L>.jsonl` per curriculum level (qwenvl.synth), trains the tokenizer on the training
corpus, and writes `init/`: config.json for the embedded shape (same architecture as Qwen2.5-VL: window
attention with full-attention blocks, 2x2 merger, MRoPE with absolute time), freshly initialised weights, the
tokenizer and generation_config.json. Training then starts from `init/`.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# ~10.6M parameters: bf16 weights ~21 MB (the package budget is 40 MB).
# MRoPE: the official theta 1e6 with sections [16, 8, 8] at head_dim 64 turns the h frequencies by at most 1e-3 rad
# per row and the w ones by 3e-5 rad per column, so attention cannot tell a picture's tokens apart by position.
# The w section always gets the lowest frequencies. theta 50 with [4, 14, 14] (columns 0.11-0.023 rad per token)
# still hid columns: across a 4-token-wide picture they turn 0.33 rad, and the `cell` probe learned top/bottom but
# never left/right. theta 5 gives rows 0.82-0.43 and columns 0.40-0.21 rad per token (1.2 rad across 4 columns),
# and the probe learns both (qwenvl.model.layers.mrope_reach; probes in docs/embedded-runs/notes.md).
SHAPE = dict(
    text=dict(hidden_size=384, intermediate_size=768, num_hidden_layers=4, num_attention_heads=6,
              num_key_value_heads=2, rope_theta=5.0, max_position_embeddings=32768,
              rope_scaling={"type": "mrope", "mrope_section": [4, 14, 14]}),
    vision=dict(depth=6, hidden_size=192, intermediate_size=512, num_heads=3, out_hidden_size=384,
                fullatt_block_indexes=[2, 5], window_size=112, tokens_per_second=2),
)


def embedded_config(tok) -> dict:
    from ..tiny import tiny_config

    cfg = tiny_config(tok, **SHAPE["text"])
    cfg["vision_config"].update(SHAPE["vision"])
    cfg["tie_word_embeddings"] = False
    return cfg


@torch.no_grad()
def init_weights(model, std: float = 0.02, seed: int = 0) -> None:
    """From-scratch init: normal(0, std) matrices and embeddings, zero biases, unit norms; residual output
    projections scaled by 1/sqrt(2 * layers) (GPT-2 style) so deep residual sums start small."""
    g = torch.Generator().manual_seed(seed)
    n_text = len(model.model.layers)
    n_vis = len(model.visual.blocks)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "norm" in name or name.endswith("ln_q.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            s = std
            if name.endswith(("o_proj.weight", "down_proj.weight")) or name.endswith("attn.proj.weight"):
                s = std / (2 * (n_vis if name.startswith("visual.") else n_text)) ** 0.5
            p.copy_(torch.randn(p.shape, generator=g) * s)


def init_checkpoint(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    from ..config import QwenVLConfig
    from ..model.qwenvl import QwenVL
    from ..tokenizer import Tokenizer
    from ..weights import save_model

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_dir(tokenizer_dir)
    cfg = embedded_config(tok.tok)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out / f).write_bytes((tokenizer_dir / f).read_bytes())
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [tok.im_end_id, tok.special_ids["<|endoftext|>"]], "pad_token_id": tok.pad_id,
         "do_sample": False, "max_new_tokens": 512}, indent=2) + "\n")
    model = QwenVL(QwenVLConfig.from_file(out))
    init_weights(model, seed=seed)
    save_model(model, out)
    n = sum(p.numel() for p in model.parameters())
    log.info("initialised %s: %.2fM parameters", out, n / 1e6)
    return out


def parse_levels(spec: str | None, curriculum: int) -> dict[int, float]:
    """"0:0.25,1:0.35,2:0.4" -> {0: 0.25, 1: 0.35, 2: 0.4} (shares of the training records per curriculum
    level; the shares are normalised). None -> {curriculum: 1.0}."""
    if not spec:
        return {int(curriculum): 1.0}
    out: dict[int, float] = {}
    try:
        for part in spec.split(","):
            lvl, _, share = part.partition(":")
            out[int(lvl)] = float(share or 1)
    except ValueError:
        raise ValueError(f"--levels {spec!r}: write LEVEL:SHARE pairs such as 0:0.25,1:0.35,2:0.4") from None
    total = sum(out.values())
    if total <= 0 or any(v < 0 for v in out.values()):
        raise ValueError(f"--levels {spec!r}: shares must be >= 0 and not all zero")
    return {k: v / total for k, v in out.items()}


def prepare(out: Path, n_train: int, n_heldout: int, seed: int = 0, curriculum: int = 1,
            vocab_size: int = 2048, workers: int = 1, levels: str | None = None) -> dict:
    """Write the synthetic splits (one training file per curriculum level: `data/train-c<L>.jsonl`, held-out
    `data/heldout-c<L>.jsonl`), train the tokenizer on the training corpus and write the from-scratch `init/`."""
    from .build import build_dataset, corpus_text

    data = out / "data"
    mix = parse_levels(levels, curriculum)
    train, files = [], []
    for lvl, share in sorted(mix.items()):
        n = max(1, round(n_train * share) // 10)
        lvl_seed = seed + 1000 * lvl  # distinct content per level (same indices would otherwise match)
        train += build_dataset(data, n_per_task=n, split="train", seed=lvl_seed, curriculum=lvl, workers=workers,
                               file_name=f"train-c{lvl}", progress=True)
        build_dataset(data, n_per_task=max(1, n_heldout // 10), split="heldout", seed=lvl_seed, curriculum=lvl,
                      workers=workers, file_name=f"heldout-c{lvl}")
        files.append(str(data / f"train-c{lvl}.jsonl"))
    tokenizer_and_init(out / "init", corpus_text(train), vocab_size=vocab_size, seed=seed)
    return {"train": len(train), "files": files, "init": str(out / "init")}


def tokenizer_and_init(init_dir: Path, corpus: str, vocab_size: int = 2048, seed: int = 0) -> Path:
    """A tokenizer trained on `corpus` (written beside the checkpoint, in init_dir/../tokenizer), then the
    from-scratch checkpoint in init_dir."""
    from .tokenizer import save_tokenizer, train_tokenizer

    tok_dir = save_tokenizer(train_tokenizer(corpus, vocab_size=vocab_size), init_dir.parent / "tokenizer")
    return init_checkpoint(init_dir, tok_dir, seed=seed)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.embedded", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-heldout", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curriculum", type=int, default=1)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--levels", help="curriculum mix as LEVEL:SHARE pairs, e.g. 0:0.25,1:0.35,2:0.4 "
                   "(default: all records at --curriculum)")
    p.add_argument("--workers", type=int, default=1)
    i = sub.add_parser("init", help="only the from-scratch checkpoint: with an existing tokenizer, or one trained "
                       "on the text of synthetic JSONL files")
    i.add_argument("--out", required=True, help="checkpoint directory to write")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", help="directory holding tokenizer.json + tokenizer_config.json "
                     "(e.g. qwenvl/embedded)")
    src.add_argument("--corpus", nargs="+", help="synthetic JSONL files whose prompts and answers train a new "
                     "tokenizer (written to OUT/../tokenizer)")
    i.add_argument("--vocab-size", type=int, default=2048)
    i.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "init":
        out = Path(args.out)
        if args.tokenizer:
            tok_dir = Path(args.tokenizer)
            missing = [f for f in ("tokenizer.json", "tokenizer_config.json") if not (tok_dir / f).is_file()]
            if missing:
                raise SystemExit(f"--tokenizer {tok_dir}: {', '.join(missing)} not found; pass a directory "
                                 "holding a trained tokenizer, or --corpus JSONL... to train one")
            init_checkpoint(out, tok_dir, seed=args.seed)
        else:
            records = []
            for f in args.corpus:
                records += [json.loads(x) for x in Path(f).read_text().splitlines() if x.strip()]
            if not records:
                raise SystemExit(f"--corpus {' '.join(args.corpus)}: no records; pass synthetic JSONL files")
            from .build import corpus_text

            tokenizer_and_init(out, corpus_text(records), vocab_size=args.vocab_size, seed=args.seed)
        print(json.dumps({"init": str(out)}))
        return
    info = prepare(Path(args.out), args.n_train, args.n_heldout, args.seed, args.curriculum, args.vocab_size,
                   args.workers, args.levels)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
