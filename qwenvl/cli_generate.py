"""`qwenvl generate` and `qwenvl chat`: stream answers to stdout, timings to stderr."""
from __future__ import annotations

import json
import sys
import time


def add_model_args(p) -> None:
    p.add_argument("-m", "--model", help="checkpoint directory (default: the embedded model)")
    p.add_argument("--dtype", help="bfloat16 | float32 (default: the checkpoint's where the hardware runs it fast)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when present)")


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)


def sampling_options(args) -> dict:
    keys = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "min_pixels", "max_pixels")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def load_model(args):
    import qwenvl

    t0 = time.perf_counter()
    vlm = qwenvl.load(args.model, dtype=args.dtype, device=args.device)
    print(f"loaded {vlm.config.num_parameters / 1e6:.1f}M parameters ({str(vlm.dtype).removeprefix('torch.')}, "
          f"{vlm.device}) in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return vlm


def _stream_answer(vlm, messages, options, out=sys.stdout, echo=True):
    """Run one conversation, streaming deltas to `out`; returns (Generation, ttft, seconds)."""
    t0 = time.perf_counter()
    ttft = None
    final = None
    for ev in vlm.events(messages, **options):
        if ttft is None:
            ttft = time.perf_counter() - t0
        if echo and ev.delta:
            out.write(ev.delta)
            out.flush()
        if ev.finished is not None:
            final = ev.finished
    return final, ttft or 0.0, time.perf_counter() - t0


def _report(g, ttft, total):
    n = g.usage.completion_tokens
    rate = (n - 1) / (total - ttft) if n > 1 and total > ttft else float("nan")
    print(f"prompt {g.usage.prompt_tokens} tokens ({g.usage.visual_tokens} visual), {n} new, "
          f"time to first token {ttft:.2f} s, {rate:.2f} tokens/s, finish {g.finish_reason}", file=sys.stderr)


def generation_json(g) -> dict:
    return {"text": g.text, "finish_reason": g.finish_reason, "token_ids": g.token_ids, "usage": g.usage.to_dict(),
            "media": [{"kind": m.kind, "original_size": list(m.original_size), "resized_size": list(m.resized_size),
                       **({"sample_fps": m.sample_fps} if m.sample_fps is not None else {})} for m in g.media]}


def cmd_generate(args) -> int:
    from .cli import CLIError

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt or not prompt.strip():
        raise CLIError("empty prompt; pass --prompt TEXT or --prompt - to read it from stdin")
    if args.fps is not None and not args.video:
        raise CLIError("--fps applies to --video; add a --video PATH")
    content = [{"type": "image", "image": p} for p in args.image or []]
    content += [{"type": "video", "video": p, **({"fps": args.fps} if args.fps else {})} for p in args.video or []]
    content.append({"type": "text", "text": prompt})
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": content}]
    if args.draw and not args.image:
        raise CLIError("--draw needs an --image to draw on")
    options = sampling_options(args)
    if args.constrain:
        options["constraint"] = args.constrain
    vlm = load_model(args)
    g, ttft, total = _stream_answer(vlm, messages, options, echo=not args.json)
    from .tasks import structured
    found = structured(g.text, g.media)
    if args.json:
        out = generation_json(g)
        if found is not None:
            out["structured"] = found
        print(json.dumps(out, ensure_ascii=False))
    else:
        print()
    if args.draw:
        _draw(args.image[0], found, args.draw)
    _report(g, ttft, total)
    return 0


def _draw(image_path: str, found: dict | None, out_path: str) -> None:
    """The first image with what the answer located (original coordinates), as PNG."""
    from .tasks.draw import draw_detections, draw_document, save_png
    from .tasks.types import Detection, DocBlock

    if found and "objects" in found:
        dets = [Detection(label=o.get("label", ""), bbox=tuple(o["bbox_2d"]) if "bbox_2d" in o else None,
                          point=tuple(o["point_2d"]) if "point_2d" in o else None) for o in found["objects"]]
        img = draw_detections(image_path, dets)
    elif found and "blocks" in found:
        blocks = [DocBlock(kind=b["kind"], bbox=tuple(b["bbox"]) if b["bbox"] else None, text=b["text"])
                  for b in found["blocks"]]
        img = draw_document(image_path, blocks)
    else:
        img = draw_detections(image_path, [])
        print("qwenvl: nothing to draw in the answer; wrote the image unchanged", file=sys.stderr)
    save_png(img, out_path)
    print(f"wrote {out_path}", file=sys.stderr)


CHAT_HELP = "commands: /image PATH, /video PATH, /reset, /quit"


def cmd_chat(args) -> int:
    vlm = load_model(args)
    history, pending = [], []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print(CHAT_HELP, file=sys.stderr)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            pending = []
            print("(conversation reset)", file=sys.stderr)
            continue
        if line.startswith(("/image ", "/video ")):
            kind, path = line[1:6], line[7:].strip()
            pending.append({"type": kind, kind: path})
            print(f"({kind} attached: {path})", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {CHAT_HELP}", file=sys.stderr)
            continue
        msg = {"role": "user", "content": pending + [{"type": "text", "text": line}]}
        try:
            g, ttft, total = _stream_answer(vlm, history + [msg], sampling_options(args))
        except ValueError as e:  # bad media in this turn: report, drop the attachment, keep chatting
            print(f"qwenvl: error: {e}", file=sys.stderr)
            pending = []
            continue
        print()
        _report(g, ttft, total)
        history += [msg, {"role": "assistant", "content": g.text}]
        pending = []
