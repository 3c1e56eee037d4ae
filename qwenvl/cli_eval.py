"""`qwenvl eval`: run a benchmark JSONL through a model (or re-score recorded answers) and print the scores.

    qwenvl eval -m DIR --task refcoco --data refcoco_val.jsonl [--limit N] [--out DIR] [--batch-size 4]
                [--max-new-tokens N] [--min-pixels N] [--max-pixels N] [--fps F] [--replay PREDICTIONS.jsonl]

The scores go to stdout as one compact JSON line; the progress bar and logs to stderr; predictions.jsonl and
scores.json to --out (default ./eval-<task>-<timestamp>/). Registered in `qwenvl.cli` by `register(sub)`;
`main(argv)` runs the subcommand on its own (same one-line errors, exit status 2).
"""
from __future__ import annotations

import argparse
import json
import sys

from .cli_generate import add_model_args

# kept here (not imported from qwenvl.tasks.evaluate) so that building the parser stays cheap
TASK_NAMES = ("refcoco", "detection", "counting", "temporal", "docvqa", "ocr", "screenspot")
VIDEO_TASKS = ("temporal",)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--task", required=True, metavar="NAME", help=f"benchmark type: {', '.join(TASK_NAMES)}")
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help="one item per line (formats in docs/eval.md); media paths may be relative to the file")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items")
    p.add_argument("--out", metavar="DIR", help="output folder (default ./eval-<task>-<timestamp>/)")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="conversations per generate call (4)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit (default: per task)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--min-pixels", type=int, metavar="N",
                   help="image resize floor (per frame for the video task)")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="image resize cap (per frame for the video task)")
    p.add_argument("--fps", type=float, help="video sampling rate when an item has no 'fps' (default 2)")
    p.add_argument("--replay", metavar="PREDICTIONS.jsonl",
                   help="score recorded answers ({\"id\", \"text\"} per line) instead of running the model; "
                        "-m still gives the processor that sets the coordinate frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> argparse.ArgumentParser:
    """Add `eval` to a `qwenvl` subparsers object (as cli.build_parser does for generate/chat)."""
    e = subparsers.add_parser("eval", help="score a model on a benchmark JSONL (refcoco, detection, counting, "
                                           "temporal, docvqa, ocr, screenspot)")
    add_eval_args(e)
    e.set_defaults(func=cmd_eval)
    return e


def generate_options(args) -> dict:
    video = args.task in VIDEO_TASKS
    opts = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "fps": args.fps,
            ("video_min_pixels" if video else "min_pixels"): args.min_pixels,
            ("video_max_pixels" if video else "max_pixels"): args.max_pixels}
    return {k: v for k, v in opts.items() if v is not None}


def cmd_eval(args) -> int:
    from .cli import CLIError
    from .tasks.evaluate import default_out_dir, evaluate, load_items, read_replay

    if args.task not in TASK_NAMES:
        raise CLIError(f"unknown task {args.task!r}; choose one of {', '.join(TASK_NAMES)}")
    if not args.model:
        raise CLIError("pass the checkpoint directory with -m DIR (its processor is needed even with --replay)")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.fps is not None and args.task not in VIDEO_TASKS:
        raise CLIError(f"--fps applies to video tasks ({', '.join(VIDEO_TASKS)}), not {args.task}")
    load_items(args.task, args.data, args.limit)  # bad data fails here, before a model is loaded
    if args.replay is not None:
        read_replay(args.replay)
    out = args.out or default_out_dir(args.task)
    if args.replay is not None:
        model = args.model
    else:
        from .cli_generate import load_model
        model = load_model(args)
    scores = evaluate(model, args.task, args.data, limit=args.limit, out_dir=out, batch_size=args.batch_size,
                      replay=args.replay, generate_options=generate_options(args), progress=not args.no_progress)
    print(json.dumps(scores, ensure_ascii=False, separators=(",", ":")))
    print(f"predictions and scores written to {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`qwenvl eval ARGS` on its own: argv without the leading 'eval'. Errors: one line on stderr, exit 2."""
    import logging

    from . import cli

    p = argparse.ArgumentParser(prog="qwenvl eval", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    add_eval_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return cmd_eval(args)
    except KeyboardInterrupt:
        return 130
    except (cli.CLIError, FileNotFoundError, ValueError, TypeError, KeyError, OSError, MemoryError,
            RuntimeError) as e:
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"qwenvl: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
