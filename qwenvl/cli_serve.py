"""`qwenvl serve`: the OpenAI-compatible HTTP server (FastAPI + uvicorn). Registered in `qwenvl.cli`.

    qwenvl serve -m DIR --host 127.0.0.1 --port 8000 [--api-key K] [--allowed-local-media-path P]
                 [--allow-remote-media] [--limit-mm-per-prompt image=5,video=1] [--max-queue N] [--max-batch N]
                 [--timeout S]
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .cli_generate import add_model_args

log = logging.getLogger("qwenvl.serve")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="the model id clients see (default: the model directory's name)")
    p.add_argument("--api-key", default=os.environ.get("QWENVL_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $QWENVL_API_KEY, else open)")
    p.add_argument("--allowed-local-media-path", metavar="DIR",
                   help="serve file:// and path media found below DIR only (default: no local files)")
    p.add_argument("--allow-remote-media", action="store_true",
                   help="let requests name http(s) media URLs (public addresses only)")
    p.add_argument("--allowed-media-network", action="append", default=[], metavar="CIDR",
                   help="with --allow-remote-media: also trust this private network, e.g. 10.1.0.0/16 (repeatable)")
    p.add_argument("--limit-mm-per-prompt", metavar="SPEC", help="images/videos per request: N, 'image=5,video=1' "
                   "or JSON (default 5 each)")
    p.add_argument("--max-visual-tokens", type=int, default=16384, help="visual tokens per request (16384)")
    p.add_argument("--max-body-bytes", type=int, default=50 * 2**20, help="request body limit (50 MiB)")
    p.add_argument("--max-image-pixels", type=int, default=64_000_000,
                   help="refuse images declaring more pixels than this, before decoding (64M)")
    p.add_argument("--max-queue", type=int, default=64, help="requests accepted but not yet generating; more get "
                   "429 with Retry-After (64)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (16)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queueing included (600)")
    p.add_argument("--max-tokens", type=int, help="default max_tokens when a request gives none "
                   "(default: generation_config.json, else 256)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def register(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions, streaming, web page)")
    add_serve_args(s)
    s.set_defaults(func=cmd_serve)
    return s


def config_from_args(args, model_name: str):
    from .serve.config import ServeConfig, parse_mm_limits

    return ServeConfig(
        model_name=args.served_model_name or model_name, api_key=args.api_key or None,
        allowed_local_media_path=args.allowed_local_media_path, allow_remote_media=args.allow_remote_media,
        allowed_media_networks=tuple(args.allowed_media_network), limit_mm_per_prompt=parse_mm_limits(
            args.limit_mm_per_prompt), max_visual_tokens=args.max_visual_tokens, max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels, max_queue=args.max_queue, max_batch=args.max_batch,
        timeout=args.timeout, max_tokens_default=args.max_tokens)


def _log_config() -> dict:
    """uvicorn's logging with the access log on stderr too: stdout stays clean."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    for h in cfg.get("handlers", {}).values():
        if h.get("stream") == "ext://sys.stdout":
            h["stream"] = "ext://sys.stderr"
    return cfg


def cmd_serve(args) -> int:
    from .cli import CLIError

    try:
        import uvicorn

        from .serve import create_app
    except ImportError as e:
        raise CLIError(f"the server needs FastAPI and uvicorn ({e}); pip install 'qwenvl[serve]'") from None
    from .cli_generate import load_model

    vlm = load_model(args)
    name = Path(vlm.path).name if vlm.path is not None else "qwenvl"
    cfg = config_from_args(args, name)
    if args.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    app = create_app(vlm, cfg)
    log.info("serving %s on http://%s:%d (page at /, API under /v1)", cfg.model_name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                log_config=_log_config())
    return 0
