"""The command line as a user runs it: subprocesses, stdout for answers, one-line errors."""
import json
import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import qwenvl


def qwenvl_cmd(*args, stdin=None, limit_as=None, timeout=300):
    def limit():
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
    return subprocess.run([sys.executable, "-m", "qwenvl", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)


@pytest.fixture(scope="module")
def setup(ref_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    img = d / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(img)
    return ref_dir[0], img, d


def test_generate_streams_the_answer(setup):
    model, img, _ = setup
    r = qwenvl_cmd("generate", "-m", model, "--image", img, "--prompt", "Describe.", "--max-new-tokens", 8,
                   "--temperature", 0)
    assert r.returncode == 0, r.stderr
    vlm = qwenvl.load(model)
    g = vlm.generate([{"role": "user", "content": [{"image": str(img)}, {"text": "Describe."}]}], max_new_tokens=8,
                     temperature=0)
    assert r.stdout == g.text + "\n"
    assert "time to first token" in r.stderr and "tokens/s" in r.stderr and "visual" in r.stderr


def test_generate_json_and_stdin_prompt(setup):
    model, img, _ = setup
    r = qwenvl_cmd("generate", "-m", model, "--image", img, "--prompt", "-", "--max-new-tokens", 5, "--json",
                   stdin="What is it?")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["usage"]["completion_tokens"] == len(out["token_ids"]) <= 5
    assert out["media"][0]["original_size"] == [120, 160] and out["finish_reason"] in ("stop", "length")


def test_chat_session(setup):
    model, img, _ = setup
    script = f"/image {img}\nDescribe.\n/reset\nhello\n/bogus\n/quit\n"
    r = qwenvl_cmd("chat", "-m", model, "--max-new-tokens", 4, "--temperature", 0, stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("time to first token") == 2
    assert "image attached" in r.stderr and "conversation reset" in r.stderr and "unknown command /bogus" in r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["generate", "-m", "/nonexistent/model", "--prompt", "x"], "does not exist"),
    (["generate", "--prompt", "x", "--image", "MISSING"], None),  # filled below
])
def test_errors_are_one_line(setup, args, fragment):
    model, img, d = setup
    if fragment is None:
        bad = d / "bad.png"
        bad.write_bytes(b"not an image")
        args, fragment = ["generate", "-m", model, "--prompt", "x", "--image", bad], "cannot be read"
    r = qwenvl_cmd(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("qwenvl: error:") and fragment in lines[-1]
    assert "Traceback" not in r.stderr


def test_bad_flag(setup):
    r = qwenvl_cmd("generate", "--prompt", "x", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments: --no-such-flag" in r.stderr


def test_out_of_memory_is_one_line(setup):
    model, _, d = setup
    big = d / "big.png"
    Image.new("RGB", (12000, 12000)).save(big)  # 144 MP: under the bomb guard, 432 MB once decoded
    r = qwenvl_cmd("generate", "-m", model, "--image", big, "--prompt", "x", "--max-new-tokens", 1,
                   limit_as=1_300_000_000)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("qwenvl: error: out of memory")
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(setup):
    r = qwenvl_cmd("--debug", "generate", "-m", "/nonexistent/model", "--prompt", "x")
    assert r.returncode != 0 and "Traceback" in r.stderr
