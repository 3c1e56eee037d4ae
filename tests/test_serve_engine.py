"""Continuous batching: KV cache rows joining and leaving, answers under concurrency equal to running alone,
client disconnects cancel, per-request timeout, a bounded 32-client load (200 or clean 429), and `qwenvl serve`."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import qwenvl
from qwenvl.generate import decode_step, generate, prefill
from qwenvl.sampling import SamplingParams
from qwenvl.tiny import make_random_checkpoint
from serve_util import Server, data_url, image_part, noise_image, png_bytes, sse_events, user


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def vlm(ckpt):
    return qwenvl.load(ckpt, dtype=torch.float32)


def _frames_url(n, seed):
    import base64
    return "data:video/jpeg;base64," + ",".join(
        base64.b64encode(png_bytes(noise_image(56, 84, seed + k), "JPEG")).decode() for k in range(n))


def _wait(pred, what, limit=60.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


# ------------------------------------------------------------------------------------------- KV cache pieces
def test_joined_rows_decode_like_separate_rows(vlm):
    """Prefill two prompts of different lengths apart, merge their caches (right-aligned), decode together:
    the logits equal decoding each alone; after one row leaves, trim_front drops the unused slots."""
    m = vlm.model
    a = vlm.processor(user({"type": "image", "image": noise_image(84, 112, 1)}, "Describe the picture."))
    b = vlm.processor(user("Hi"))
    ca, da, la = prefill(m, a, 4)
    cb, db, lb = prefill(m, b, 2)
    ta, tb = [int(la[0].argmax())], [int(lb[0].argmax())]
    sa, sb = ca.length, cb.length
    assert sa > sb
    ref_a, ref_b = [], []
    ca2, cb2 = prefill(m, a, 4)[0], prefill(m, b, 2)[0]
    for _ in range(5):  # each alone (ensure_room grows cb2 past its 2 free slots)
        ref_a.append(decode_step(m, ca2, [ta[-1]], da))
        ref_b.append(decode_step(m, cb2, [tb[-1]], db))
        ta.append(int(ref_a[-1][0].argmax()))
        tb.append(int(ref_b[-1][0].argmax()))
    s1, s2 = ca.extend_rows(cb)
    assert (s1, s2) == (0, sa - sb) and ca.batch == 2 and ca.length == sa
    delta = torch.cat([da - s1, db - s2])
    for k in range(5):
        out = decode_step(m, ca, [ta[k], tb[k]], delta)
        assert torch.allclose(out[0], ref_a[k][0], atol=1e-4) and torch.allclose(out[1], ref_b[k][0], atol=1e-4)
    ca.keep_rows(torch.tensor([1]))  # the long row leaves: its leading slots are now unused
    n = ca.trim_front()
    assert n == sa - sb and ca.length == sb + 5
    out = decode_step(m, ca, [tb[5]], delta[1:] + n)
    ref = decode_step(m, cb2, [tb[5]], db)
    assert torch.allclose(out, ref, atol=1e-4)


# ------------------------------------------------------------------------------------------- through HTTP
@pytest.fixture(scope="module")
def server(vlm):
    with Server(vlm, max_batch=8, max_queue=12) as s:
        yield s


def test_answers_under_concurrency_equal_running_alone(server, vlm):
    long_body = {"messages": user("Tell me a long story about 42 red circles."), "max_tokens": 120,
                 "ignore_eos": True}
    bodies = [
        {"messages": user(image_part(data_url(png_bytes(noise_image(150, 220, 1)))), "Describe."), "max_tokens": 24},
        {"messages": user({"type": "video_url", "video_url": {"url": _frames_url(4, 9)}}, "What moves?"),
         "max_tokens": 16},
        {"messages": user("Count the stars."), "max_tokens": 30},
        {"messages": user(image_part(data_url(png_bytes(noise_image(90, 300, 2)))), "vs",
                          image_part(data_url(png_bytes(noise_image(200, 60, 3))))), "max_tokens": 20, "n": 2},
    ]
    results = {}

    def post(key, body):
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", **body}, timeout=120)
        results[key] = r

    t = threading.Thread(target=post, args=("long", long_body))
    t.start()
    _wait(lambda: server.engine.stats()["running"] >= 1, "the long request to start generating")
    threads = [threading.Thread(target=post, args=(i, b)) for i, b in enumerate(bodies)]
    for th in threads:
        th.start()
    for th in threads + [t]:
        th.join()
    assert server.engine.peak_batch >= 3  # requests joined the running batch
    for key, body in [("long", long_body)] + list(enumerate(bodies)):
        r = results[key]
        assert r.status_code == 200, r.text
        conv = _offline_conv(body["messages"])
        batch = vlm.processor(conv)
        params = SamplingParams.from_options(vlm.generation_defaults, max_new_tokens=body["max_tokens"])
        alone = generate(vlm.model, vlm.tokenizer, batch, [params], set() if body.get("ignore_eos") else vlm.stop_ids)[0]
        got = [c["message"]["content"] for c in r.json()["choices"]]
        assert got == [alone.text] * body.get("n", 1), key
        assert r.json()["usage"]["prompt_tokens"] == alone.usage.prompt_tokens


def _offline_conv(messages):
    """The same conversation for vlm.generate, media decoded here."""
    import base64
    import io

    from PIL import Image

    def img(url):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    out = []
    for m in messages:
        parts = []
        for p in m["content"]:
            if p["type"] == "image_url":
                parts.append({"type": "image", "image": img(p["image_url"]["url"])})
            elif p["type"] == "video_url":
                frames = p["video_url"]["url"].split(",")[1:]
                parts.append({"type": "video", "video": [img("x," + f) for f in frames]})
            else:
                parts.append(p)
        out.append({**m, "content": parts})
    return out


def test_disconnect_cancels_generation(server):
    before = server.engine.stats()["cancelled"]
    body = {"model": "tiny", "messages": user("Go on forever."), "max_tokens": 20000, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break  # leave mid-stream: the connection closes
    _wait(lambda: server.engine.stats()["running"] == 0, "the stream's row to leave the batch")
    assert server.engine.stats()["cancelled"] == before + 1
    with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
        httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=1.0)
    _wait(lambda: server.engine.stats()["running"] == 0, "the abandoned request to be cancelled")
    assert server.engine.stats()["cancelled"] == before + 2


def test_per_request_timeout(vlm):
    with Server(vlm, timeout=1.0) as s:
        body = {"model": "tiny", "messages": user("Go on."), "max_tokens": 20000, "ignore_eos": True}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert "--timeout" in r.json()["error"]["message"] and r.headers["x-should-retry"] == "false"
        with httpx.stream("POST", s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            events = sse_events(r)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
        assert s.engine.stats()["timeouts"] == 2


def test_32_concurrent_clients_succeed_or_get_429(server):
    """A bounded load: 32 clients at once (images, frame-list videos, text; 4 tokens each) against max_batch 8
    and max_queue 12. Every answer is a 200 or a clean 429 with Retry-After; the engine stays within bounds."""
    img = data_url(png_bytes(noise_image(120, 160, 4)))
    kinds = [user(image_part(img), "Describe."), user({"type": "video_url", "video_url": {"url": _frames_url(2, 5)}},
                                                      "What happens?"), user("Say something.")]
    barrier = threading.Barrier(32)
    out = [None] * 32

    def client(i):
        barrier.wait()
        with httpx.Client(timeout=120) as c:
            r = c.post(server.url + "/v1/chat/completions",
                       json={"model": "tiny", "messages": kinds[i % 3], "max_tokens": 4, "stream": i % 2 == 0})
            out[i] = (r.status_code, r.headers.get("retry-after"), r.read())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [o for o in out if o[0] == 200]
    busy = [o for o in out if o[0] == 429]
    assert len(ok) + len(busy) == 32, [o[:2] for o in out]
    assert len(ok) >= 12
    for _, retry, body in busy:
        assert retry is not None and int(retry) >= 1 and b'"rate_limit_error"' in body and b"--max-queue" in body
    for _, _, body in ok:
        assert b"[DONE]" in body or b'"chat.completion"' in body
    st = server.engine.stats()
    assert st["peak_batch"] <= 8 and st["running"] == 0 and st["queued"] == 0 and st["cache_slots"] == 0
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_qwenvl_serve_command(ckpt, tmp_path):
    """`qwenvl serve` end to end in its own process: flags, the key, the page and a clean Ctrl-C."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "qwenvl", "serve", "-m", str(ckpt), "--port", str(port),
                             "--api-key", "k1", "--limit-mm-per-prompt", "image=1,video=0", "--max-batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None
        _wait(up, "the server to start", limit=120)
        assert proc.poll() is None, proc.stderr.read().decode()
        h = {"Authorization": "Bearer k1"}
        assert httpx.get(url + "/v1/models", headers=h).json()["data"][0]["id"] == ckpt.name
        r = httpx.post(url + "/v1/chat/completions", headers=h, timeout=60, json={
            "messages": user({"type": "video_url", "video_url": {"url": _frames_url(2, 1)}}, "Hi")})
        assert r.status_code == 400 and "limit-mm-per-prompt" in r.json()["error"]["message"]
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "<script>" in page.text and "/v1/chat/completions" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out == b""  # stdout stays clean; logs go to stderr
    assert b"serving" in err
