"""Command line: `qwenvl <subcommand>`. Answers go to stdout; logs and timings to stderr."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("qwenvl")


class CLIError(Exception):
    """An expected failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwenvl", description="Run, serve, fine-tune and evaluate Qwen2.5-VL.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)
    from .cli_demo import register as register_demo
    register_demo(sub)

    from .cli_generate import add_model_args, add_sampling_args, cmd_chat, cmd_generate
    g = sub.add_parser("generate", help="answer one prompt about images/videos, streamed to stdout")
    add_model_args(g)
    g.add_argument("--image", action="append", metavar="PATH", help="an image (repeatable)")
    g.add_argument("--video", action="append", metavar="PATH", help="a video (repeatable)")
    g.add_argument("--fps", type=float, help="video sampling rate (default 2)")
    g.add_argument("--prompt", required=True, help="the question; '-' reads it from stdin")
    g.add_argument("--system", help="system prompt")
    add_sampling_args(g)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text; boxes, "
                   "points, document blocks, time spans and tool calls found in the answer are added under "
                   "'structured' in the original image's coordinates")
    g.add_argument("--constrain", choices=["bbox", "point"], help="only allow a bbox_2d / point_2d JSON list")
    g.add_argument("--draw", metavar="PNG", help="write the first image with the answer's boxes/points/blocks drawn")
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat (/image PATH, /video PATH, /reset, /quit)")
    add_model_args(c)
    c.add_argument("--system", help="system prompt")
    add_sampling_args(c)
    c.set_defaults(func=cmd_chat)

    from .cli_train import register as register_train
    register_train(sub)
    from .cli_eval import register as register_eval
    register_eval(sub)
    from .cli_serve import register as register_serve
    register_serve(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CLIError, FileNotFoundError, ValueError, TypeError, KeyError, OSError, MemoryError, RuntimeError) as e:
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        low = str(e).lower()
        if isinstance(e, MemoryError) or any(k in low for k in ("out of memory", "not enough memory",
                                                                "can't allocate memory", "cannot allocate memory")):
            msg = "out of memory; try a smaller --max-pixels, fewer frames (--fps), a smaller model or bfloat16"
        print(f"qwenvl: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
