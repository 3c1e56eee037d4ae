"""`qwenvl train`: packed SFT / DPO from a YAML config (single process, or FSDP2 under torchrun)."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    t = sub.add_parser("train", help="fine-tune from a YAML config (stages: vision, all, long_context, sft, dpo)")
    t.add_argument("--config", required=True, help="YAML file with TrainConfig keys (see docs/training.md)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--no-resume", action="store_true", help="start fresh even if out_dir has checkpoints")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from .train.config import TrainConfig
    from .train.trainer import Trainer

    cfg = TrainConfig.from_file(args.config, args.set)
    trainer = Trainer(cfg)
    hist = trainer.fit(resume=not args.no_resume)
    if trainer.dist.main and hist:
        last = hist[-1]
        print(json.dumps({"step": last["step"], "loss": round(last["loss"], 6), "out_dir": cfg.out_dir}))
    from .train import distributed
    distributed.teardown(trainer.dist)
    return 143 if trainer._stop else 0


if __name__ == "__main__":
    from .cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
