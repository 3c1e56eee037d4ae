"""Videos through the processor: files, data URLs, frame lists, absolute time, context limits."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl.media import MediaError, smart_resize
from qwenvl.media.video import video_max_pixels
from qwenvl.processor import LONG_VIDEO
from test_video import write_video


@pytest.fixture(scope="module")
def vlm(ref_dir):
    return qwenvl.load(ref_dir[0], dtype=torch.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", nframes=30, fps=10)  # 3 s at 10 fps, 64x48


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def test_video_file_carries_absolute_time(vlm, clip):
    b = vlm.processor(_user({"type": "video", "video": clip, "fps": 2.0}, {"type": "text", "text": "what?"}))
    info = b.media[0][0]
    n = 6  # 3 s * 2 fps
    assert info.kind == "video" and info.original_size == (48, 64)
    assert info.sample_fps == pytest.approx(n / 30 * 10)
    assert len(info.frame_times) == n
    t, h, w = b.video_grid_thw[0].tolist()
    assert t == n // 2 and (h * 14, w * 14) == info.resized_size
    assert b.second_per_grid_ts.tolist() == pytest.approx([2 / info.sample_fps])
    # MRoPE temporal ids step by s * tokens_per_second = 2 per temporal patch at 2 fps
    pos, _ = vlm.model.rope_index(b.input_ids, b.attention_mask, None, b.video_grid_thw, b.second_per_grid_ts)
    vid = (b.input_ids[0] == vlm.config.video_token_id)
    tids = pos[0, 0, vid].unique().tolist()
    assert [x - tids[0] for x in tids] == [0, 2, 4]


def test_video_sources_agree(vlm, clip):
    data = open(clip, "rb").read()
    a = vlm.processor(_user({"video": clip, "fps": 2.0}))
    b = vlm.processor(_user({"type": "video_url", "video_url": {"url": "data:video/mp4;base64," +
                                                                       base64.b64encode(data).decode()}, "fps": 2.0}))
    c = vlm.processor(_user({"video": "file://" + clip}), fps=2.0)
    for other in (b, c):
        assert torch.equal(a.pixel_values_videos, other.pixel_values_videos)
        assert torch.equal(a.second_per_grid_ts, other.second_per_grid_ts)


def test_comma_joined_jpeg_frames(vlm):
    frames = []
    for k in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.full((56, 84, 3), 40 * k, np.uint8)).save(buf, format="JPEG")
        frames.append(base64.b64encode(buf.getvalue()).decode())
    b = vlm.processor(_user({"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames)},
                             "fps": 1.0}))
    assert b.video_grid_thw.tolist() == [[2, 4, 6]]
    assert b.second_per_grid_ts.tolist() == [2.0]


def test_video_errors_name_the_part(vlm, clip, tmp_path):
    with pytest.raises(MediaError, match=r"message 0, part 1 \(video\).*fps.*nframes"):
        vlm.processor(_user({"text": "x"}, {"video": clip, "fps": 2.0, "nframes": 4}))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42garbage" * 10)
    with pytest.raises(MediaError, match=r"part 0 \(video\)"):
        vlm.processor(_user({"video": str(bad)}))
    with pytest.raises(MediaError, match="not found|does not exist|no such"):
        vlm.processor(_user({"video": str(tmp_path / "none.mp4")}))


def test_video_over_context_errors_or_downsamples(vlm, clip):
    msgs = _user({"video": clip, "fps": 10.0, "min_pixels": 200 * 28 * 28}, {"text": "q"})
    full = vlm.processor(msgs)
    n = full.input_ids.shape[1]
    with pytest.raises(MediaError, match="video_fit='downsample'"):
        vlm.processor(msgs, max_length=n // 2)
    small = vlm.processor(msgs, max_length=n // 2, video_fit="downsample")
    assert small.input_ids.shape[1] <= n // 2
    assert small.video_grid_thw[0].prod() < full.video_grid_thw[0].prod()


def test_long_video_limits_are_reachable():
    """With LONG_VIDEO, a 1 h 1080p video sampled to 768 frames stays within 24,576 video tokens."""
    n = 768
    ele = {"total_pixels": LONG_VIDEO["total_pixels"], "min_pixels": LONG_VIDEO["video_min_pixels"]}
    lo, hi = video_max_pixels(ele, n)
    h, w = smart_resize(1080, 1920, 28, lo, hi)
    tokens = n // 2 * (h // 28) * (w // 28)
    assert tokens <= 24576 and tokens > 20000
    # without the lowered floor the 1.05 x min_pixels rule would exceed the budget
    lo2, hi2 = video_max_pixels({"total_pixels": LONG_VIDEO["total_pixels"]}, n)
    h2, w2 = smart_resize(1080, 1920, 28, lo2, hi2)
    assert n // 2 * (h2 // 28) * (w2 // 28) > 24576


def test_long_video_option_through_processor(vlm, tmp_path):
    path = write_video(tmp_path / "long.mp4", nframes=800, fps=30)
    b = vlm.processor(_user({"video": path, "fps": 30.0}), **LONG_VIDEO)
    t = b.video_grid_thw[0, 0].item()
    assert 2 * t == 768  # capped at max_frames
    assert int(b.video_grid_thw[0].prod()) // 4 <= 24576
