"""`qwenvl train sft|dpo --config run.yaml [--KEY=VALUE ...]`: packed SFT / DPO (single process, or FSDP2 under
torchrun). Any TrainConfig key can be overridden on the command line as `--key=value` or `--key value`
(kebab- or snake-case; values parsed as YAML, paths relative to the current directory)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

_ALIASES = {"output_dir": "out_dir", "config_file": "config"}
_PATH_KEYS = ("model", "out_dir", "data", "eval_data")


def register(sub) -> None:
    t = sub.add_parser(
        "train", help="fine-tune from a YAML config: `train sft` or `train dpo` (stages: vision, all, "
        "long_context, sft, dpo)",
        description="Train from a YAML config (docs/training.md). Any config key can be overridden: "
        "--max-steps 10 --output-dir runs/x --lr=1e-4 --eval-every 50 ...")
    t.add_argument("mode", nargs="?", choices=["sft", "dpo"],
                   help="objective (default: the config's); `dpo` without a `stage` in the config uses the dpo preset")
    t.add_argument("--config", required=True, help="YAML file with TrainConfig keys")
    t.add_argument("-m", "--model", help="starting checkpoint directory (overrides the config's `model`)")
    t.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    t.add_argument("--output-dir", help="where checkpoints, metrics.jsonl and the export go")
    r = t.add_mutually_exclusive_group()
    r.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the output directory (error if there is none); "
                   "by default a run continues from one when it exists")
    r.add_argument("--no-resume", action="store_true", help="start from the starting model even if checkpoints exist")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.set_defaults(func=cmd_train, accepts_overrides=True)


def parse_overrides(tokens: list[str]) -> list[str]:
    """['--lr=1e-4', '--eval-every', '50', '--no-export'] -> ['lr=1e-4', 'eval_every=50', 'export=false']."""
    out, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise ValueError(f"unexpected argument {tok!r}: overrides look like --key=value or --key value")
        key, eq, val = tok[2:].partition("=")
        if not eq:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                val, i = tokens[i + 1], i + 1
            elif key.startswith("no-") or key.startswith("no_"):
                key, val = key[3:], "false"
            else:
                val = "true"
        key = key.replace("-", "_")
        out.append(f"{_ALIASES.get(key, key)}={val}")
        i += 1
    return out


def _absolute(item: str) -> str:
    """Path-valued overrides given on the command line are relative to the current directory."""
    import yaml

    from .train.config import TINY_RANDOM

    key, _, val = item.partition("=")
    if key not in _PATH_KEYS:
        return item
    v = yaml.safe_load(val)
    if isinstance(v, str) and v and not (key == "model" and v == TINY_RANDOM):
        v = str(Path(v).absolute())
    elif isinstance(v, list):
        v = [str(Path(str(p)).absolute()) for p in v]
    return f"{key}={json.dumps(v)}"


def cmd_train(args) -> int:
    from .cli import CLIError
    from .train.config import TrainConfig
    from .train.trainer import Trainer

    sets = list(args.set) + parse_overrides(args.overrides or [])
    if args.model:
        sets.append(f"model={args.model}")
    if args.max_steps is not None:
        sets.append(f"max_steps={args.max_steps}")
    if args.output_dir:
        sets.append(f"out_dir={args.output_dir}")
    sets = [_absolute(s) for s in sets]
    if args.mode:
        sets = _apply_mode(args.mode, args.config, sets)
    cfg = TrainConfig.from_file(args.config, sets)
    trainer = Trainer(cfg)
    if args.resume and not trainer.has_checkpoint():
        raise CLIError(f"--resume: no checkpoint in {cfg.out_dir}; run without --resume to start a new run")
    hist = trainer.fit(resume=not args.no_resume)
    if trainer.dist.main and hist:
        last = hist[-1]
        line = {"step": last["step"], "loss": round(last["loss"], 6), "out_dir": cfg.out_dir}
        if "eval_loss" in last:
            line["eval_loss"] = round(last["eval_loss"], 6)
        print(json.dumps(line))
    from .train import distributed
    distributed.teardown(trainer.dist)
    return 143 if trainer._stop else 0


def _apply_mode(mode: str, config: str, sets: list[str]) -> list[str]:
    """`train dpo` / `train sft` set the objective; a config that says otherwise is an error, not a guess."""
    import yaml

    try:
        d = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        d = {}  # TrainConfig.from_file reports a missing or broken file with its own message
    d = d if isinstance(d, dict) else {}
    for s in sets:
        k, _, v = s.partition("=")
        d[k] = yaml.safe_load(v)
    objective = d.get("objective") or ("dpo" if d.get("stage") == "dpo" else None)
    if objective and objective != mode:
        raise ValueError(f"{config} trains objective {objective!r} but the command is `train {mode}`; "
                         f"run `qwenvl train {objective}` or set objective: {mode}")
    out = list(sets) + [f"objective={mode}"]
    if "stage" not in d:
        out.append(f"stage={mode}")
    return out


if __name__ == "__main__":
    from .cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
