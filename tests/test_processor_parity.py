"""Our processor against transformers 4.51.3's processor fed the way qwen-vl-utils feeds it, end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from oracle import hf_processor, qvu_fetch_image, reference_logits
from qwenvl.chat_template import DEFAULT_CHAT_TEMPLATE
from qwenvl.tiny import build_tokenizer

SIZES = [(10, 10), (27, 27), (28, 28), (29, 57), (1, 150), (56, 84), (100, 150), (223, 337), (480, 640), (512, 512),
         (333, 999), (719, 1281), (1080, 1920), (28, 5600), (5600, 28), (50, 9000), (60, 11000), (77, 13),
         (13, 77), (640, 480), (1001, 999), (42, 70), (70, 42), (98, 98), (14, 14), (2000, 3000), (3700, 3500),
         (300, 40), (250, 1000), (1234, 567), (800, 200)]


def _rand_image(h, w, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    ch = 4 if mode == "RGBA" else 3
    a = rng.integers(0, 256, (h, w, ch), dtype=np.uint8)
    return Image.fromarray(a, mode)


@pytest.fixture(scope="module")
def procs(ref_dir):
    path, hf, cfg = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32)
    return vlm, hf_processor(build_tokenizer(), DEFAULT_CHAT_TEMPLATE), hf


@pytest.mark.parametrize("i,size", list(enumerate(SIZES)))
def test_image_tensors_identical(procs, i, size):
    vlm, ref, _ = procs
    h, w = size
    img = _rand_image(h, w, i, "RGBA" if i % 5 == 0 else "RGB")
    opts = {"max_pixels": 60000} if i % 7 == 3 else {}
    msgs = [{"role": "user", "content": [{"type": "image", "image": img, **opts}, {"type": "text", "text": "hi"}]}]
    ours = vlm.processor(msgs)
    text = ref.apply_chat_template(msgs, add_generation_prompt=True)
    theirs = ref(text=[text], images=[qvu_fetch_image(img, max_pixels=opts.get("max_pixels", 12845056))],
                 return_tensors="pt")
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.image_grid_thw, theirs["image_grid_thw"])
    assert (ours.pixel_values - theirs["pixel_values"]).abs().max().item() <= 1e-6
    info = ours.media[0][0]
    assert info.original_size == (h, w) and info.resized_size == tuple(int(x) * 14 for x in ours.image_grid_thw[0, 1:])


def _frames(n, h, w, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 7 * k, axis=1) for k in range(n)]


def _e2e(procs, messages, images=(), videos=(), fps=None, batch=False):
    vlm, ref, hf = procs
    ours = vlm.processor(messages)
    convs = messages if batch else [messages]
    texts = [ref.apply_chat_template(c, add_generation_prompt=True) for c in convs]
    kw = {}
    if images:
        kw["images"] = list(images)
    if videos:
        kw["videos"] = list(videos)
        kw["fps"] = fps
    theirs = ref(text=texts, padding=True, return_tensors="pt", **kw)
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.attention_mask, theirs["attention_mask"])
    for k in ("pixel_values", "pixel_values_videos"):
        if k in theirs:
            assert (getattr(ours, k) - theirs[k]).abs().max().item() <= 1e-6
    if "second_per_grid_ts" in theirs:
        assert ours.second_per_grid_ts.tolist() == pytest.approx(list(theirs["second_per_grid_ts"]), abs=1e-7)
    ref_logits = reference_logits(hf, dict(theirs))
    m = theirs["attention_mask"].bool()
    assert (vlm.forward(ours)[m] - ref_logits[m]).abs().max().item() <= 1e-4


def test_e2e_single_image(procs):
    img = _rand_image(300, 410, 1)
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Describe."}]}]
    _e2e(procs, msgs, images=[qvu_fetch_image(img)])


def test_e2e_multiple_images(procs):
    a, b = _rand_image(200, 120, 2), _rand_image(90, 333, 3, "RGBA")
    msgs = [{"role": "user", "content": [{"image": a}, {"type": "text", "text": "and"}, {"type": "image", "image": b},
                                         {"type": "text", "text": "compare"}]}]
    _e2e(procs, msgs, images=[qvu_fetch_image(a), qvu_fetch_image(b)])


@pytest.mark.parametrize("fps", [0.5, 2.0, 3.7])
def test_e2e_video_frame_list(procs, fps):
    frames = _frames(6, 112, 168, int(fps * 10))
    msgs = [{"role": "user", "content": [{"type": "video", "video": [Image.fromarray(f) for f in frames], "fps": fps},
                                         {"type": "text", "text": "What happens?"}]}]
    _e2e(procs, msgs, videos=[np.stack(frames)], fps=[fps])


def test_e2e_interleaved_multiturn(procs):
    a, b = _rand_image(150, 150, 4), _rand_image(60, 200, 5)
    frames = _frames(4, 84, 140, 6)
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": [{"type": "text", "text": "And this clip"},
                                     {"type": "video", "video": [Image.fromarray(f) for f in frames], "fps": 2.0},
                                     {"type": "text", "text": "with"}, {"type": "image", "image": b}]},
    ]
    _e2e(procs, msgs, images=[qvu_fetch_image(a), qvu_fetch_image(b)], videos=[np.stack(frames)], fps=[2.0])


def test_e2e_left_padded_batch(procs):
    a, b = _rand_image(120, 260, 7), _rand_image(400, 100, 8)
    c1 = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "short"}]}]
    c2 = [{"role": "user", "content": "a text-only question that is somewhat longer than the other one"}]
    c3 = [{"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "image", "image": b}]}]
    _e2e(procs, [c1, c2, c3], images=[qvu_fetch_image(a), qvu_fetch_image(b)], batch=True)
