"""Helpers for the server tests: a real uvicorn server on a loopback port, media encoders, and a tiny checkpoint
trained to give known answers (so structured results, tool calls and the page's boxes can be checked)."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import qwenvl
from qwenvl.serve import ServeConfig, create_app

EXAMPLE = Path(qwenvl.__file__).parent / "serve" / "example.png"
BOX_PROMPT = "Locate every object in the image and output the bbox coordinates in JSON format."
BOX_ANSWER = '```json\n[\n\t{"bbox_2d": [31, 53, 113, 134], "label": "red circle"}\n]\n```'
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}},
                                                                "required": ["city"]}}}
TOOL_PROMPT = "What is the weather in Paris?"
TOOL_ANSWER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class Server:
    """uvicorn serving `create_app(vlm, cfg)` on 127.0.0.1 in a thread; `.url` is the base (no /v1)."""

    def __init__(self, vlm, **cfg):
        import uvicorn

        cfg.setdefault("model_name", "tiny")
        self.app = create_app(vlm, ServeConfig(**cfg))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                return self
            time.sleep(0.025)
        raise RuntimeError("the test server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def engine(self):
        return self.app.state.engine

    def client(self, api_key="EMPTY", **kw):
        import openai
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, **kw)


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def noise_image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_video(path, nframes: int = 8, fps: int = 4, w: int = 64, h: int = 48) -> str:
    import av

    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=Fraction(fps))
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"crf": "0", "preset": "ultrafast"}
    base = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for i in range(nframes):
        for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return str(path)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}]


def sse_events(resp) -> list:
    """Parse a raw SSE body (httpx streaming response): JSON objects, and the string '[DONE]' at the end."""
    out, buf = [], ""
    for text in resp.iter_text():
        buf += text
        while "\n\n" in buf:
            event, buf = buf.split("\n\n", 1)
            for line in event.splitlines():
                if line.startswith("data: "):
                    data = line[6:]
                    out.append(data if data == "[DONE]" else json.loads(data))
    return out


def make_parrot_checkpoint(path, steps: int = 80, seed: int = 0) -> Path:
    """A tiny checkpoint trained (teacher forcing, full parameters) to answer BOX_PROMPT on the example image
    with BOX_ANSWER and TOOL_PROMPT (with WEATHER_TOOL) with TOOL_ANSWER: the prompts are built exactly as the
    server builds them (same schema and processor)."""
    from qwenvl.serve.schema import parse_chat_request
    from qwenvl.tiny import make_random_checkpoint
    from qwenvl.weights import save_model

    path = Path(make_random_checkpoint(path, seed=seed))
    vlm = qwenvl.load(path, dtype=torch.float32, pack=False)
    cfg = ServeConfig()
    pairs = []
    for body, answer in (
            ({"messages": user(image_part(data_url(EXAMPLE.read_bytes(), "image/png")), BOX_PROMPT)}, BOX_ANSWER),
            ({"messages": user(TOOL_PROMPT), "tools": [WEATHER_TOOL]}, TOOL_ANSWER)):
        req = parse_chat_request(body, cfg, vlm.generation_defaults, 32768)
        conv = [{**m, "content": [dict(p, image=Image.open(EXAMPLE)) if p["type"] == "image" else p
                                  for p in m["content"]]} if isinstance(m["content"], list) else m
                for m in req.messages]
        conv = [{**m, "content": [{k: v for k, v in p.items() if k != "value"} for p in m["content"]]}
                if isinstance(m["content"], list) else m for m in conv]
        b = vlm.processor(conv)
        ans = vlm.tokenizer.encode(answer) + [vlm.tokenizer.im_end_id]
        ids = torch.cat([b.input_ids, torch.tensor([ans])], 1)
        labels = torch.full_like(ids, -100)
        labels[0, b.input_ids.shape[1] - 1:-1] = torch.tensor(ans)  # position t predicts token t + 1
        with torch.no_grad():  # the vision tower stays as it is: its features are computed once
            emb = vlm.model.embed(ids, b.pixel_values, b.image_grid_thw)
            pos, _ = vlm.model.rope_index(ids, None, b.image_grid_thw)
        pairs.append((ids, labels, emb, pos))
    model = vlm.model
    params = [prm for n, prm in model.named_parameters() if not n.startswith(("visual.", "model.embed_tokens"))]
    for prm in params:
        prm.requires_grad_(True)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is as fast, and far faster on a busy machine
    try:
        _train(model, opt, pairs, steps)
    finally:
        torch.set_num_threads(threads)
    save_model(model, path)
    return path


def _train(model, opt, pairs, steps):
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = 0.0
            for ids, labels, emb, pos in pairs:
                logits = model(ids, inputs_embeds=emb, position_ids=pos)
                loss = loss + torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-100)
            loss.backward()
            opt.step()
