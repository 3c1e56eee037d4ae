"""FastAPI routes: /v1/models, /v1/chat/completions (JSON and SSE), /health, and the page at /."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat_template import TemplateError
from ..media.common import MediaError
from ..messages import MessageError
from . import responses as R
from .config import ServeConfig
from .engine import Engine, Job
from .errors import APIError
from .media import MediaResolver
from .schema import ChatRequest, parse_chat_request

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
EXAMPLE = Path(__file__).with_name("example.png")  # the page's example picture
_DRAIN_FACTOR = 16  # an oversized body is read (and dropped) up to this many times the cap, so clients see the 413


def create_app(vlm, cfg: ServeConfig) -> FastAPI:
    engine = Engine(vlm, cfg.max_batch, cfg.max_queue)
    context_len = vlm.processor.max_length if vlm.processor is not None else vlm.config.text.max_position_embeddings
    stop_ids = vlm.stop_ids
    created_at = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(engine.close)

    app = FastAPI(title="qwenvl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        msg = {404: f"no route {request.url.path}; the API is under /v1 (GET /v1/models, POST /v1/chat/completions)",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, msg).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e):
        log.exception("unhandled error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    def check_auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if not auth:
            raise APIError(401, "missing API key; send the header 'Authorization: Bearer <key>' (the server was "
                                "started with --api-key)", code="missing_api_key")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise APIError(401, "invalid API key; send 'Authorization: Bearer <key>' with the server's --api-key",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/example.png")
    async def example():
        return Response(EXAMPLE.read_bytes(), media_type="image/png")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": created_at,
                                            "owned_by": "qwenvl", "max_model_len": context_len}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.monotonic()
        check_auth(request)
        body = await read_json(request, cfg.max_body_bytes)
        req = parse_chat_request(body, cfg, vlm.generation_defaults, context_len)
        if req.model is not None and req.model != cfg.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {cfg.model_name!r} "
                                "(see GET /v1/models)", param="model", code="model_not_found")
        engine.reserve()
        try:
            batch = await run_in_threadpool(prepare, vlm, cfg, req, context_len)
            job = Job(batch, req.params, set() if req.ignore_eos else stop_ids, asyncio.get_running_loop(),
                      cfg.timeout, started=t0, stream=req.stream)
            engine.submit(job)
        except BaseException:
            engine.release()
            raise
        cid, created = R.completion_id(), R.now()
        if req.stream:
            return StreamingResponse(stream(job, req, cid, created), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await collect(job, req, cid, created, request)

    async def collect(job: Job, req: ChatRequest, cid: str, created: int, request: Request):
        choices = [R.Choice(k) for k in range(req.n)]
        left = req.n
        try:
            while left:
                get = asyncio.ensure_future(job.queue.get())
                done, _ = await asyncio.wait({get}, timeout=0.5)
                if not done:
                    get.cancel()
                    if await request.is_disconnected():  # only "done"/"error" events come: check when idle
                        job.cancel()
                        return JSONResponse(APIError(400, "client disconnected").body(), status_code=400)
                    continue
                ev = get.result()
                if ev.kind == "error":
                    raise ev.error
                if ev.kind == "done":
                    choices[ev.choice].generation = ev.generation
                    left -= 1
        finally:
            if left:
                job.cancel()
        return R.completion(cid, cfg.model_name, created, choices, bool(req.tools))

    async def stream(job: Job, req: ChatRequest, cid: str, created: int):
        model = cfg.model_name
        choices = [R.Choice(k) for k in range(req.n)]
        left, ok = req.n, True
        try:
            yield R.sse(R.chunk(cid, model, created, [{"index": k, "delta": {"role": "assistant", "content": ""},
                                                       "logprobs": None, "finish_reason": None}
                                                      for k in range(req.n)]))
            while left:
                ev = await job.queue.get()
                if ev.kind == "error":
                    yield R.sse(ev.error.body())
                    ok = False
                    break
                c = choices[ev.choice]
                text = c.filter.feed(ev.text) if req.tools else ev.text
                if text:
                    yield R.sse(R.chunk(cid, model, created, [{"index": c.index, "delta": {"content": text},
                                                               "logprobs": None, "finish_reason": None}]))
                if ev.kind == "done":
                    c.generation = ev.generation
                    left -= 1
                    for ch in R.final_chunks(cid, model, created, c, bool(req.tools)):
                        yield R.sse(ch)
            if ok and req.include_usage:
                prompt = choices[0].generation.usage.prompt_tokens
                gen = sum(c.generation.usage.completion_tokens for c in choices)
                yield R.sse(R.chunk(cid, model, created, [], R.usage_dict(prompt, gen)))
            yield "data: [DONE]\n\n"
        finally:
            if left:
                job.cancel()  # the client went away (or the stream failed): stop generating for it

    return app


async def read_json(request: Request, cap: int):
    """The body as JSON: 415 for a non-JSON content type, 413 over `cap` bytes, 400 when it does not parse."""
    ct = request.headers.get("content-type", "")
    if ct and "json" not in ct.lower():
        raise APIError(415, f"Content-Type {ct!r} is not supported; send JSON with 'Content-Type: application/json'",
                       code="unsupported_media_type")
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"the request body is larger than the server's limit of {cap} bytes (--max-body-bytes); "
                            "send smaller or fewer images, or downscale them first", code="body_too_large")
    chunks, total = [], 0
    async for part in request.stream():
        total += len(part)
        if total > cap:
            if declared.isdigit() and int(declared) > _DRAIN_FACTOR * cap:
                raise too_big
            chunks = None
            if total > _DRAIN_FACTOR * cap:
                raise too_big
            continue
        if chunks is not None:
            chunks.append(part)
    if chunks is None:
        raise too_big
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None


def prepare(vlm, cfg: ServeConfig, req: ChatRequest, context_len: int):
    """Worker thread: resolve media under the server's rules, run the processor, check the budgets."""
    opts = dict(req.proc_options)
    proc = vlm.processor
    resolver = MediaResolver(cfg, (int(opts.get("min_pixels", proc.min_pixels)),
                                   int(opts.get("max_pixels", proc.max_pixels))))
    try:
        conv = resolver.resolve(req.messages)
        opts.setdefault("total_pixels", cfg.max_visual_tokens * 28 * 28)
        batch = vlm.processor(conv, **opts)
    except (MediaError, MessageError, TemplateError, ValueError, TypeError) as e:
        raise APIError(400, str(e), param="messages", code="invalid_request") from None
    finally:
        resolver.cleanup()
    c = vlm.config
    ids = batch.input_ids[0]
    visual = int(((ids == c.image_token_id) | (ids == c.video_token_id)).sum())
    if visual > cfg.max_visual_tokens:
        raise APIError(400, f"the images and videos of this request take {visual} visual tokens, over the server's "
                            f"limit of {cfg.max_visual_tokens}; lower max_pixels / fps (mm_processor_kwargs) or send "
                            "smaller media", param="messages", code="too_many_visual_tokens")
    need = ids.shape[0] + max(p.max_new_tokens for p in req.params)
    if need > context_len:
        raise APIError(400, f"the prompt ({ids.shape[0]} tokens) plus max_tokens "
                            f"({max(p.max_new_tokens for p in req.params)}) exceeds the {context_len}-token context; "
                            "lower max_tokens or shorten the prompt", param="max_tokens", code="context_length_exceeded")
    return batch
