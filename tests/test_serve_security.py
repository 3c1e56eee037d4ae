"""What a request may not do: read files outside the allowed directory, reach remote or private hosts, send
oversized or malformed data, decompression bombs, or skip the API key. Each is refused with its status and a
message naming the fix. Remote fetches go to a real HTTP server on loopback addresses."""
import http.server
import ipaddress
import os
import socket
import struct
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
import torch

import qwenvl
from qwenvl.tiny import make_random_checkpoint
from serve_util import Server, data_url, image_part, noise_image, png_bytes, user

KEY = "sk-test-key"
PNG = png_bytes(noise_image(40, 60, 0))
TRUSTED = "127.0.0.2"  # the test's "intranet": the only address the open server trusts


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        u = urlsplit(self.path)
        if u.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(u.query)["to"][0])
            self.end_headers()
            return
        if u.path == "/slow":
            time.sleep(3)
        body = PNG if u.path in ("/img.png", "/slow") else b"x" * 300_000 if u.path == "/big" else None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture(scope="module")
def media_host():
    """(trusted base URL on 127.0.0.2, untrusted port on 127.0.0.1)."""
    servers = [http.server.ThreadingHTTPServer((host, 0), _Handler) for host in (TRUSTED, "127.0.0.1")]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield f"http://{TRUSTED}:{servers[0].server_port}", servers[1].server_port
    for s in servers:
        s.shutdown()


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return qwenvl.load(make_random_checkpoint(tmp_path_factory.mktemp("tiny")), dtype=torch.float32)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "ok.png").write_bytes(PNG)
    (root / "secret.png").write_bytes(PNG)
    os.symlink(root / "secret.png", allowed / "link.png")
    return allowed, root


@pytest.fixture(scope="module")
def open_server(vlm, dirs):
    with Server(vlm, api_key=KEY, allowed_local_media_path=dirs[0], allow_remote_media=True,
                allowed_media_networks=(f"{TRUSTED}/32",), max_body_bytes=200_000, max_image_bytes=100_000,
                image_fetch_timeout=1.0) as s:
        yield s


@pytest.fixture(scope="module")
def closed_server(vlm):
    with Server(vlm) as s:  # defaults: no local files, no remote media, no key
        yield s


def ask(server, url, key=KEY):
    """(status, error body or None) of a one-image request."""
    try:
        server.client(api_key=key).chat.completions.create(model="tiny", messages=user(image_part(url), "Hi"),
                                                           max_tokens=2)
        return 200, None
    except openai.APIStatusError as e:
        return e.status_code, e.body


def test_api_key(open_server):
    r = httpx.post(open_server.url + "/v1/chat/completions", json={"messages": user("Hi"), "max_tokens": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as e:
        open_server.client(api_key="sk-wrong").models.list()
    assert e.value.body["code"] == "invalid_api_key"
    assert httpx.get(open_server.url + "/v1/models", headers={"Authorization": "Basic " + KEY}).status_code == 401
    assert open_server.client(api_key=KEY).models.list().data[0].id == "tiny"
    assert httpx.get(open_server.url + "/health").status_code == 200  # liveness needs no key


def test_local_files_only_below_the_allowed_directory(open_server, closed_server, dirs):
    allowed, root = dirs
    assert ask(open_server, f"file://{allowed}/ok.png")[0] == 200
    assert ask(open_server, str(allowed / "ok.png"))[0] == 200
    for url in (f"file://{allowed}/../secret.png", f"{allowed}/../secret.png", f"file://{allowed}/link.png",
                f"file://{root}/secret.png", "file:///etc/passwd", "../secret.png"):
        status, body = ask(open_server, url)
        assert status == 403 and body["code"] == "local_media_forbidden", (url, body)
        assert "outside the allowed media directory" in body["message"]
    status, body = ask(open_server, f"file://{allowed}/missing.png")
    assert status == 400 and body["code"] == "media_not_found"
    status, body = ask(closed_server, f"file://{allowed}/ok.png", key="EMPTY")
    assert status == 403 and "--allowed-local-media-path" in body["message"]


def test_remote_media_off_by_default(closed_server, media_host):
    status, body = ask(closed_server, media_host[0] + "/img.png", key="EMPTY")
    assert status == 403 and body["code"] == "remote_media_disabled" and "--allow-remote-media" in body["message"]


def _private_hostnames() -> list[str]:
    names = ["localhost"]
    try:  # this machine's own name, when it resolves to a private address (typical in containers)
        ip = ipaddress.ip_address(socket.gethostbyname(socket.gethostname()))
        if not ip.is_global:
            names.append(socket.gethostname())
    except OSError:
        pass
    return names


def test_remote_media_public_addresses_only(open_server, media_host):
    trusted, port = media_host
    assert ask(open_server, trusted + "/img.png")[0] == 200  # the operator's trusted network works
    urls = [f"http://127.0.0.1:{port}/img.png", "http://10.0.0.1/a.png", "http://192.168.1.1/a.png",
            "http://169.254.169.254/latest/meta-data/", f"http://[::1]:{port}/img.png", f"http://0.0.0.0:{port}/a.png"]
    urls += [f"http://{name}:{port}/img.png" for name in _private_hostnames()]  # checked after DNS resolution
    for url in urls:
        status, body = ask(open_server, url)
        assert status == 403 and body["code"] == "media_address_forbidden", (url, body)
        assert "public addresses" in body["message"]


def test_redirects_are_checked_at_every_hop(open_server, media_host):
    trusted, port = media_host
    assert ask(open_server, f"{trusted}/redirect?to={trusted}/img.png")[0] == 200
    for target in (f"http://127.0.0.1:{port}/img.png", "http://169.254.169.254/latest/meta-data/",
                   f"http://localhost:{port}/img.png"):
        status, body = ask(open_server, f"{trusted}/redirect?to={target}")
        assert status == 403 and body["code"] == "media_address_forbidden", (target, body)


def test_remote_size_cap_and_timeout(open_server, media_host):
    trusted, _ = media_host
    status, body = ask(open_server, trusted + "/big")
    assert status == 413 and "byte limit" in body["message"]
    status, body = ask(open_server, trusted + "/slow")
    assert status == 400 and body["code"] == "media_fetch_timeout"


def test_oversized_body_is_413(open_server):
    big = data_url(b"\x89PNG" + os.urandom(250_000))
    status, body = ask(open_server, big)
    assert status == 413 and body["code"] == "body_too_large" and "--max-body-bytes" in body["message"]


def test_malformed_base64_is_400(open_server):
    for url in ("data:image/png;base64,@@@not-base64@@@", "data:image;base64,iVBORw0KGgo=x"):
        status, body = ask(open_server, url)
        assert status == 400 and "base64" in body["message"], body
    frames = "data:video/jpeg;base64," + ",".join([data_url(PNG).split(",", 1)[1], "***"])
    with pytest.raises(openai.BadRequestError) as e:
        open_server.client(api_key=KEY).chat.completions.create(
            model="tiny", messages=user({"type": "video_url", "video_url": {"url": frames}}, "Hi"), max_tokens=2)
    assert "video frame 1" in e.value.body["message"] and "base64" in e.value.body["message"]


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (decoding it would need gigabytes)."""
    png = bytearray(png_bytes(noise_image(1, 1, 0).convert("L")))
    ihdr = bytearray(png[12:29])  # b"IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def test_decompression_bomb_is_refused_before_decoding(open_server):
    status, body = ask(open_server, data_url(bomb_png(40_000, 40_000), "image/png"))
    assert status == 400 and "decompression" in body["message"], body
    assert httpx.get(open_server.url + "/health").json()["status"] == "ok"
