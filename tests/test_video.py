"""Video preprocessing (qwenvl.media.video) against the qwen-vl-utils rules of reference.md §4."""
import functools
import http.server
import logging
import math
import threading
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.media import video as V
from qwenvl.media.common import MAX_PIXELS, MIN_PIXELS, MediaError, smart_resize
from qwenvl.media.video import (VideoInput, fetch_video, frame_indices, resize_frames, smart_nframes,
                                video_max_pixels)

W, H = 64, 48  # synthetic frames: 8 blocks of 8 px across the top half spell the frame number in binary


def code_frame(i: int) -> np.ndarray:
    a = np.zeros((H, W, 3), np.uint8)
    for bit in range(8):
        if i >> bit & 1:
            a[: H // 2, bit * 8:(bit + 1) * 8] = 255
    a[H // 2:] = (37 * i) % 200 + 20  # bottom half: a grey level, so frames differ everywhere
    return a


def read_code(frame_chw: torch.Tensor) -> int:
    """Frame number from a (3, h, w) frame of any size (block centres survive resizing)."""
    h, w = frame_chw.shape[-2:]
    y = int(H / 4 * h / H)
    return sum(1 << bit for bit in range(8) if frame_chw[:, y, int((bit * 8 + 4) * w / W)].float().mean() > 128)


def write_video(path, nframes, fps, options=None):
    c = av.open(str(path), "w", options=options or {})
    s = c.add_stream("libx264", rate=Fraction(fps))
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.options = {"crf": "0", "preset": "ultrafast"}
    for i in range(nframes):
        for p in s.encode(av.VideoFrame.from_ndarray(code_frame(i), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return str(path)


def decode_all(path) -> torch.Tensor:
    """Independent decode: every frame, (T, 3, H, W) uint8."""
    with av.open(str(path)) as c:
        arrs = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("vids")
    out = {}
    for fps, secs in [(10, 1), (24, 2), (25, 3), (30, 6), (10, 6)]:
        out[(fps, secs, "mp4")] = write_video(d / f"v{fps}_{secs}.mp4", fps * secs, fps)
    out[(24, 2, "mkv")] = write_video(d / "v24_2.mkv", 48, 24)  # matroska: no frame count in the container
    return out


# ---------------------------------------------------------------------------------------------------------------------
# smart_nframes / video_max_pixels worked examples (reference.md §4.4)


def test_worked_example_10s_30fps():
    n = smart_nframes({}, 300, 30.0)
    assert n == 20 and n / 300 * 30.0 == 2.0
    mn, mx = video_max_pixels({}, n)
    assert (mn, mx) == (100352, 602112)
    h, w = smart_resize(1080, 1920, 28, mn, mx)
    assert (h, w) == (560, 1008)
    grid = (n // 2, h // 14, w // 14)
    assert grid == (10, 40, 72) and math.prod(grid) // 4 == 7200


def test_worked_example_1h_30fps():
    n = smart_nframes({}, 108000, 30.0)
    assert n == 768
    sample_fps = n / 108000 * 30.0
    assert sample_fps == pytest.approx(0.213333, abs=1e-6) and 2 / sample_fps == pytest.approx(9.375)
    mn, mx = video_max_pixels({}, n)
    assert mx == 235200
    assert smart_resize(1080, 1920, 28, mn, mx) == (336, 644)


@pytest.mark.parametrize("nframes,expect", [(7, 8), (5, 4), (6, 6), (3, 4), (9, 8), (10, 10)])
def test_nframes_rounds_half_to_even(nframes, expect):
    assert smart_nframes({"nframes": nframes}, 300, 30.0) == expect


def test_fps_min_max_frames_clamps(caplog):
    assert smart_nframes({"fps": 0.1}, 300, 30.0) == 4  # 1 frame -> min_frames 4
    assert smart_nframes({"fps": 0.1, "min_frames": 5}, 300, 30.0) == 6  # min_frames ceil'd to even
    assert smart_nframes({"max_frames": 9}, 300, 30.0) == 8  # max_frames floor'd to even
    assert smart_nframes({"fps": 10}, 300, 30.0) == 100
    assert smart_nframes({"fps": 3}, 100, 30.0) == 10
    assert smart_nframes({}, 3, 30.0) == 2  # default max_frames = min(768, total) -> 2
    with caplog.at_level(logging.WARNING, logger="qwenvl.media.video"):
        assert smart_nframes({"fps": 60}, 300, 30.0) == 300  # 600 asked, clamped to the frames there are
    assert "fps=60" in caplog.text
    assert smart_nframes({}, 20000, 30.0) == 768  # default cap


@pytest.mark.parametrize("ele,total,fragment", [
    ({"fps": 2, "nframes": 4}, 300, "only one of fps or nframes"),
    ({"nframes": 1}, 300, "between 2 and 300"),  # round(0.5) = 0
    ({"nframes": 40}, 30, "nframes"),
    ({}, 1, "between 2 and 1"),
    ({"video": "/x/clip.mp4", "nframes": 400}, 300, "'/x/clip.mp4'"),
])
def test_smart_nframes_errors(ele, total, fragment):
    with pytest.raises(MediaError) as e:
        smart_nframes(ele, total, 30.0)
    assert fragment in str(e.value)


def test_video_max_pixels_user_limits(caplog):
    assert video_max_pixels({"max_pixels": 200000}, 20) == (100352, 200000)
    with caplog.at_level(logging.WARNING, logger="qwenvl.media.video"):
        assert video_max_pixels({"max_pixels": 10**7}, 20) == (100352, 602112)
    assert "max_pixels" in caplog.text
    assert video_max_pixels({"min_pixels": 400000}, 768) == (400000, 420000)  # int(min * 1.05) wins
    assert video_max_pixels({"total_pixels": 1_000_000}, 10) == (100352, 200000)
    assert video_max_pixels({"total_pixels": 1_000_001}, 10)[1] == pytest.approx(200000.2)  # kept exact


def test_frame_indices():
    assert frame_indices(0, 5, 3) == [0, 2, 5]  # 2.5 -> 2 (half to even)
    assert frame_indices(0, 7, 3) == [0, 4, 7]  # 3.5 -> 4
    assert frame_indices(0, 299, 20) == [round(k * 299 / 19) for k in range(20)]
    # float32 like the reference's torch.linspace: 9965.4993 (float64) lands on 9966 in float32
    assert frame_indices(0, 14958, 768)[511] == 9966
    idx = frame_indices(0, 107999, 768)
    assert idx[0] == 0 and idx[-1] == 107999 and len(set(idx)) == 768


# ---------------------------------------------------------------------------------------------------------------------
# decoding synthetic videos


CASES = [  # (video, options, n, indices, sample_fps) computed by hand from §4.2-4.3
    ((10, 1, "mp4"), {}, 4, [0, 3, 6, 9], 4.0),
    ((24, 2, "mp4"), {}, 4, [0, 16, 31, 47], 2.0),
    ((25, 3, "mp4"), {}, 6, [0, 15, 30, 44, 59, 74], 2.0),
    ((30, 6, "mp4"), {}, 12, [0, 16, 33, 49, 65, 81, 98, 114, 130, 146, 163, 179], 2.0),
    ((30, 6, "mp4"), {"video_start": 1.5, "video_end": 4.2}, 4, [45, 72, 99, 126], 4 / 82 * 30),
    ((30, 6, "mp4"), {"video_start": 1.51, "video_end": 4.19}, 4, [46, 72, 99, 125], 1.5),  # ceil / floor
    ((30, 6, "mp4"), {"video_start": 5.5}, 4, [165, 170, 174, 179], 8.0),
    ((10, 6, "mp4"), {"video_end": 100}, 12, [0, 5, 11, 16, 21, 27, 32, 38, 43, 48, 54, 59], 2.0),
    ((25, 3, "mp4"), {"nframes": 7}, 8, [0, 11, 21, 32, 42, 53, 63, 74], 8 / 75 * 25),
    ((24, 2, "mp4"), {"fps": 5.0}, 10, [0, 5, 10, 16, 21, 26, 31, 37, 42, 47], 5.0),
    ((24, 2, "mkv"), {}, 4, [0, 16, 31, 47], 2.0),
]


@pytest.mark.parametrize("key,opts,n,indices,sample_fps", CASES)
def test_fetch_video_selects_the_right_frames(vids, key, opts, n, indices, sample_fps):
    fps = key[0]
    out = fetch_video({"video": vids[key], **opts})
    assert isinstance(out, VideoInput)
    assert out.frames.shape[0] == n and out.frames.dtype == torch.uint8
    assert out.sample_fps == pytest.approx(sample_fps, rel=1e-12)
    assert out.frame_times == pytest.approx([i / fps for i in indices])
    assert out.original_size == (H, W)
    assert out.resized_size == smart_resize(H, W, 28, *video_max_pixels(opts, n)) == tuple(out.frames.shape[-2:])
    assert [read_code(f) for f in out.frames] == indices
    ref = decode_all(vids[key])
    assert torch.equal(out.frames, resize_frames(ref[indices], out.resized_size))  # == decode all, then index


def test_file_url_resized_hw_and_small_pixels(vids):
    path = vids[(25, 3, "mp4")]
    out = fetch_video({"video": "file://" + path, "resized_height": 100, "resized_width": 130})
    assert out.resized_size == (112, 140) and out.frames.shape == (6, 3, 112, 140)
    out = fetch_video({"video": path, "min_pixels": 28 * 28, "max_pixels": 56 * 56})
    assert out.resized_size == smart_resize(H, W, 28, 28 * 28, 56 * 56) == (56, 56)
    assert [read_code(f) for f in out.frames] == [0, 15, 30, 44, 59, 74]


@pytest.mark.parametrize("claimed_delta", [+7, -5, -1000])
@pytest.mark.parametrize("opts", [{}, {"video_start": 1.0, "video_end": 2.0}, {"nframes": 180, "min_pixels": 784, "max_pixels": 3136}])
def test_wrong_container_count_falls_back(vids, monkeypatch, claimed_delta, opts):
    path = vids[(30, 6, "mp4")]
    good = fetch_video({"video": path, **opts})
    monkeypatch.setattr(V, "_claimed_frames", lambda stream: max(0, 180 + claimed_delta))
    out = fetch_video({"video": path, **opts})
    assert torch.equal(out.frames, good.frames) and out.frame_times == good.frame_times
    assert out.sample_fps == good.sample_fps


def test_stops_decoding_after_video_end(vids, monkeypatch):
    counts = []
    real = V._decode
    monkeypatch.setattr(V, "_decode", lambda *a: counts.append(real(*a)) or counts[-1])
    fetch_video({"video": vids[(30, 6, "mp4")], "video_start": 1.5, "video_end": 4.2})
    assert counts == [127]  # one pass, up to frame 126
    counts.clear()
    fetch_video({"video": vids[(24, 2, "mkv")]})
    assert counts == [48, 48]  # unknown count: a counting pass, then the selecting pass


# ---------------------------------------------------------------------------------------------------------------------
# resize_frames


def test_resize_same_size_is_untouched():
    x = torch.randint(0, 256, (3, 3, 56, 84), dtype=torch.uint8)
    y = resize_frames(x, (56, 84))
    assert y.dtype == torch.uint8 and torch.equal(y, x)


def test_resize_integer_valued_in_range():
    x = torch.randint(0, 256, (2, 3, 97, 131), dtype=torch.uint8)
    for size in [(56, 84), (280, 392)]:
        y = resize_frames(x, size)
        assert y.shape == (2, 3, *size) and y.dtype == torch.uint8
        assert torch.equal(y, y.round()) and y.min() >= 0 and y.max() <= 255
    assert resize_frames(x, (280, 392)).max() == 255 and resize_frames(x, (280, 392)).min() == 0  # overshoot clamped


def test_resize_constant_and_gradient():
    c = torch.full((1, 3, 50, 70), 200, dtype=torch.uint8)
    for size in [(28, 28), (112, 168)]:
        assert torch.equal(resize_frames(c, size), torch.full((1, 3, *size), 200, dtype=torch.uint8))
    ramp = torch.arange(256, dtype=torch.uint8).expand(1, 3, 8, 256)  # value = x
    y = resize_frames(ramp.contiguous(), (8, 64))[0, 0, 4].float()
    j = torch.arange(64, dtype=torch.float32)
    expect = 4 * j + 1.5  # antialiased (area-like) average of x over each output pixel's footprint
    assert (y[4:60] - expect[4:60]).abs().max() <= 1.0
    assert not torch.equal(y, expect.round())  # (sanity: a real resampling happened, not a copy)


# ---------------------------------------------------------------------------------------------------------------------
# frame lists


def _pil_expected(imgs, size):
    return torch.stack([torch.from_numpy(np.array(i.convert("RGB").resize((size[1], size[0])))).permute(2, 0, 1)
                        for i in imgs])


def test_frame_list_pil_padded_to_even():
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for _ in range(3)]
    out = fetch_video({"video": imgs})
    size = smart_resize(60, 80, 28, MIN_PIXELS, MAX_PIXELS)
    assert size == (56, 84) and out.resized_size == size and out.original_size == (60, 80)
    assert out.frames.shape == (4, 3, 56, 84) and out.frames.dtype == torch.uint8
    exp = _pil_expected(imgs, size)
    assert torch.equal(out.frames[:3], exp) and torch.equal(out.frames[3], exp[2])
    assert out.sample_fps == 2.0 and out.frame_times == [0.0, 0.5, 1.0, 1.0]


def test_frame_list_numpy_and_fps_keys(tmp_path):
    arrs = [np.full((56, 56, 3), 10 * i, np.uint8) for i in range(5)]
    out = fetch_video({"video": arrs})
    assert out.frames.shape == (6, 3, 56, 56) and out.frames[5].eq(40).all() and out.frames[1].eq(10).all()
    assert fetch_video({"video": arrs, "sample_fps": 3.0}).sample_fps == 3.0
    out = fetch_video({"video": arrs, "fps": 4.0, "sample_fps": 3.0})
    assert out.sample_fps == 4.0 and out.frame_times == [0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # paths and file:// URLs, min/max_pixels and resized_height/width from the element
    paths = []
    for i, a in enumerate(arrs[:2]):
        Image.fromarray(np.repeat(a, 4, axis=1)).save(tmp_path / f"f{i}.png")
        paths.append(str(tmp_path / f"f{i}.png"))
    out = fetch_video({"video": [paths[0], "file://" + paths[1]], "max_pixels": 56 * 112})
    assert out.original_size == (56, 224) and out.resized_size == smart_resize(56, 224, 28, MIN_PIXELS, 56 * 112)
    out = fetch_video({"video": paths, "resized_height": 50, "resized_width": 50})
    assert out.resized_size == (56, 56)


def test_frame_list_mixed_sizes_use_first_target():
    a = Image.fromarray(np.full((60, 80, 3), 50, np.uint8))
    b = Image.fromarray(np.full((120, 90, 3), 90, np.uint8))
    out = fetch_video({"video": [a, b]})
    assert out.frames.shape == (2, 3, 56, 84) and out.frames[1].eq(90).all()


def test_frame_list_rgba_composited_on_white():
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[:, :28] = (255, 0, 0, 255)  # opaque red | fully transparent
    out = fetch_video({"video": [Image.fromarray(rgba, "RGBA"), rgba]})
    for f in out.frames:
        assert f[:, :, :28].permute(1, 2, 0).eq(torch.tensor([255.0, 0, 0])).all()
        assert f[:, :, 28:].eq(255).all()


# ---------------------------------------------------------------------------------------------------------------------
# errors


def _raises(ele, fragment, **kw):
    with pytest.raises(MediaError) as e:
        fetch_video(ele, **kw)
    assert fragment in str(e.value), str(e.value)
    return str(e.value)


def test_error_files(tmp_path, vids):
    _raises({"video": str(tmp_path / "nope.mp4")}, "not found")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 100)
    msg = _raises({"video": str(tmp_path / "junk.mp4")}, "cannot be opened as a video")
    assert "junk.mp4" in msg
    data = open(vids[(30, 6, "mp4")], "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: lost
    _raises({"video": str(tmp_path / "cut.mp4")}, "cut.mp4")
    fast = write_video(tmp_path / "fast.mp4", 60, 30, options={"movflags": "faststart"})
    data = open(fast, "rb").read()
    (tmp_path / "cut2.mp4").write_bytes(data[: len(data) // 3])  # index intact, frames missing
    _raises({"video": str(tmp_path / "cut2.mp4")}, "corrupt or truncated")


def test_error_no_video_stream_and_too_short(tmp_path):
    with av.open(str(tmp_path / "a.wav"), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for p in list(s.encode(fr)) + list(s.encode()):
            c.mux(p)
    _raises({"video": str(tmp_path / "a.wav")}, "no video stream")
    one = write_video(tmp_path / "one.mp4", 1, 10)
    _raises({"video": one}, "1 decodable frame")


def test_error_options(vids):
    path = vids[(10, 1, "mp4")]
    _raises({"video": path, "fps": 2, "nframes": 4}, "only one of fps or nframes")
    msg = _raises({"video": path, "nframes": 12}, "between 2 and 10")
    assert "v10_1.mp4" in msg and "nframes" in msg
    _raises({"video": path, "video_start": 0.8, "video_end": 0.3}, "video_start")


def test_error_frame_lists(tmp_path):
    _raises({"video": []}, "empty")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    good = np.zeros((56, 56, 3), np.uint8)
    _raises({"video": [good, str(tmp_path / "bad.png")]}, "frame 1")
    _raises({"video": [good, good, str(tmp_path / "missing.png")]}, "frame 2")
    _raises({"video": [np.zeros((56, 56, 7), np.uint8)]}, "shape")
    _raises({"video": [good, 3]}, "unsupported image value")
    # float frames follow the image rules: values in [0, 1] are scaled, others rounded and clipped to uint8
    out = fetch_video({"video": [good.astype(np.float32) + 0.6, good]})
    assert out.frames.dtype == torch.uint8 and int(out.frames[0].max()) == 153  # 0.6 * 255


# ---------------------------------------------------------------------------------------------------------------------
# remote


@pytest.fixture
def http_dir(tmp_path):
    handler = functools.partial(type("Q", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(tmp_path))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield tmp_path, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_remote(http_dir, vids):
    d, base = http_dir
    (d / "v.mp4").write_bytes(open(vids[(25, 3, "mp4")], "rb").read())
    _raises({"video": base + "/v.mp4"}, "allow_remote=True")
    out = fetch_video({"video": base + "/v.mp4"}, allow_remote=True)
    assert torch.equal(out.frames, fetch_video({"video": vids[(25, 3, "mp4")]}).frames)
    _raises({"video": base + "/v.mp4"}, "limit", allow_remote=True, max_remote_bytes=1000)
    _raises({"video": base + "/missing.mp4"}, "could not be downloaded", allow_remote=True)
