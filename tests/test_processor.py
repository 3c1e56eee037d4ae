"""Message formats, image sources, chat template behaviour, Batch contents and bad-input errors."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl.chat_template import render
from qwenvl.media import MediaError, smart_resize
from qwenvl.messages import MessageError

README_EXAMPLE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                  "<|image_pad|><|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def vlm(ref_dir):
    return qwenvl.load(ref_dir[0], dtype=torch.float32)


def _png(w=64, h=48, mode="RGB", color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


# ------------------------------------------------------------------------------------------ worked examples
@pytest.mark.parametrize("hw,expected", [((1080, 1920), (1092, 1932)), ((480, 640), (476, 644)), ((20, 30), (56, 84)),
                                         ((4000, 6000), (2912, 4368))])
def test_smart_resize_worked_examples(hw, expected):
    assert smart_resize(*hw) == expected


def test_smart_resize_half_to_even():
    assert smart_resize(42, 70 * 2) == (56, 140)  # 42/28 = 1.5 -> 2
    assert smart_resize(70, 70) == (56, 56)  # 2.5 -> 2, then min_pixels 3136 = 56*56 holds


# ------------------------------------------------------------------------------------------ chat template
def test_template_matches_readme_example(vlm):
    msgs = _user({"type": "image", "image": "x.png"}, {"type": "text", "text": "Describe this image."})
    assert vlm.processor.render(msgs) == README_EXAMPLE
    assert render(msgs) == README_EXAMPLE


def test_template_vision_ids_roles_and_no_generation_prompt():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": [{"image": "a"}, {"video": "v"},
                                                                            {"image_url": {"url": "b"}}, "q"]},
            {"role": "assistant", "content": "ok"}, {"role": "tool", "content": "result"}]
    from qwenvl.messages import normalize_conversation, template_view
    text = render(template_view(normalize_conversation(msgs)), add_vision_id=True, add_generation_prompt=False)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|>"
                    "<|vision_end|>Video 1: <|vision_start|><|video_pad|><|vision_end|>Picture 2: <|vision_start|>"
                    "<|image_pad|><|vision_end|>q<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
                    "<|im_start|>tool\nresult<|im_end|>\n")


def test_checkpoint_template_is_used(ref_dir, tmp_path):
    import shutil
    import json
    d = tmp_path / "tpl"
    shutil.copytree(ref_dir[0], d)
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "{% for m in messages %}[{{ m['role'] }}]"
                                                                       "{% endfor %}{% if add_generation_prompt %}>"
                                                                       "{% endif %}"}))
    v = qwenvl.load(d)
    assert v.processor.render([{"role": "user", "content": "x"}]) == "[user]>"


# ------------------------------------------------------------------------------------------ formats and sources
def test_all_image_sources_give_identical_tensors(vlm, tmp_path):
    png = _png()
    p = tmp_path / "red.png"
    p.write_bytes(png)
    b64 = base64.b64encode(png).decode()
    arr = np.asarray(Image.open(io.BytesIO(png)))
    sources = [str(p), f"file://{p}", f"data:image/png;base64,{b64}", f"data:image;base64,{b64}", b64, png,
               Image.open(io.BytesIO(png)), arr, torch.from_numpy(arr.copy())]
    batches = [vlm.processor(_user({"type": "image", "image": s}, {"type": "text", "text": "?"})) for s in sources]
    openai = vlm.processor(_user({"type": "image_url", "image_url": {"url": f"data:image;base64,{b64}"}},
                                 {"type": "text", "text": "?"}))
    for b in batches + [openai]:
        assert torch.equal(b.input_ids, batches[0].input_ids)
        assert torch.equal(b.pixel_values, batches[0].pixel_values)


def test_string_content_multi_turn_and_batch(vlm):
    one = vlm.processor([{"role": "user", "content": "hello"}])
    assert one.input_ids.shape[0] == 1 and one.pixel_values is None
    batch = vlm.processor([[{"role": "user", "content": "hi"}],
                           [{"role": "user", "content": [{"image": _png()}, {"text": "long question here"}]}]])
    assert batch.input_ids.shape[0] == 2
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[1].all()  # left padded
    assert batch.input_ids[0, 0] == vlm.tokenizer.pad_id
    assert [len(m) for m in batch.media] == [0, 1]


def test_batch_records_sizes(vlm):
    b = vlm.processor(_user({"image": _png(100, 30)}, {"image": _png(50, 500), "max_pixels": 5000}))
    (a, c) = b.media[0]
    assert a.original_size == (30, 100) and a.resized_size == smart_resize(30, 100)
    assert c.original_size == (500, 50) and c.resized_size == smart_resize(500, 50, max_pixels=5000)
    assert b.image_grid_thw.tolist() == [[1, a.resized_size[0] // 14, a.resized_size[1] // 14],
                                         [1, c.resized_size[0] // 14, c.resized_size[1] // 14]]


def test_per_item_and_call_level_pixel_options(vlm):
    img = _png(640, 480)
    default = vlm.processor(_user({"image": img}))
    call = vlm.processor(_user({"image": img}), max_pixels=100_000)
    item = vlm.processor(_user({"image": img, "max_pixels": 50_000}), max_pixels=100_000)
    fixed = vlm.processor(_user({"image": img, "resized_height": 100, "resized_width": 200}))
    assert default.media[0][0].resized_size == (476, 644)
    assert call.media[0][0].resized_size == smart_resize(480, 640, max_pixels=100_000)
    assert item.media[0][0].resized_size == smart_resize(480, 640, max_pixels=50_000)
    assert fixed.media[0][0].resized_size == (112, 196)


def test_rgba_is_composited_on_white(vlm):
    clear = vlm.processor(_user({"image": _png(56, 56, "RGBA", (0, 0, 0, 0))}))
    white = vlm.processor(_user({"image": _png(56, 56, "RGB", (255, 255, 255))}))
    assert torch.equal(clear.pixel_values, white.pixel_values)


def test_patch_rows_match_an_explicit_loop():
    from qwenvl.media.image import patchify
    T, C, H, W = 2, 3, 56, 84
    x = torch.randn(T, C, H, W)
    rows, grid = patchify(x)
    gh, gw = H // 14, W // 14
    expected = []
    for bh in range(gh // 2):
        for bw in range(gw // 2):
            for mh in range(2):
                for mw in range(2):
                    r, c = (2 * bh + mh) * 14, (2 * bw + mw) * 14
                    expected.append(x[:, :, r:r + 14, c:c + 14].permute(1, 0, 2, 3).reshape(-1))
    assert grid == (1, gh, gw)
    assert torch.equal(rows, torch.stack(expected))


# ------------------------------------------------------------------------------------------ bad input
def test_unreadable_corrupt_truncated_and_empty_images(vlm, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(_png(200, 200)[:300])
    cases = [(str(junk), "cannot be read"), (str(trunc), "corrupt or truncated"), (b"", "empty"),
             (str(tmp_path / "missing.png"), "not found"), (np.zeros((0, 5, 3), np.uint8), "shape"),
             ("data:image/png;base64,@@@notbase64@@@", "not valid base64"), (12345, "unsupported image value")]
    for value, frag in cases:
        with pytest.raises(MediaError, match=frag) as e:
            vlm.processor(_user({"type": "image", "image": value}))
        assert "message 0, part 0 (image)" in str(e.value)


def test_decompression_bomb_refused_before_decoding(vlm):
    # a tiny PNG whose header declares 30000 x 30000 pixels
    import struct
    import zlib
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(MediaError, match="decompression"):
        vlm.processor(_user({"image": bomb}))


def test_extreme_aspect_ratio(vlm):
    with pytest.raises(MediaError, match="aspect ratio .* exceeds 200"):
        vlm.processor(_user({"image": np.zeros((2, 500, 3), np.uint8)}))


def test_aspect_check_uses_the_original_size(vlm):
    """30x5990 (ratio 199.7) is accepted, as qwen-vl-utils accepts it, though it resizes to 28x5992."""
    b = vlm.processor(_user({"image": np.zeros((30, 5990, 3), np.uint8)}))
    assert b.media[0][0].resized_size == (28, 5992)


def test_unknown_part_role_and_remote_off(vlm):
    with pytest.raises(MessageError, match="unknown content part type 'sticker'"):
        vlm.processor(_user({"type": "sticker", "sticker": 1}))
    with pytest.raises(MessageError, match="audio parts are not supported"):
        vlm.processor(_user({"type": "input_audio", "input_audio": {}}))
    with pytest.raises(MessageError, match="unknown role 'robot'"):
        vlm.processor([{"role": "robot", "content": "x"}])
    with pytest.raises(MediaError, match="allow_remote_media=True"):
        vlm.processor(_user({"image": "https://example.com/cat.png"}))
    with pytest.raises(MediaError, match="no value"):
        vlm.processor(_user({"type": "image"}))


def test_literal_placeholders_in_text_are_rejected(vlm):
    with pytest.raises(ValueError, match="placeholders"):
        vlm.processor([{"role": "user", "content": "look <|image_pad|> here"}])


def test_too_many_visual_tokens_for_the_context(vlm):
    big = np.zeros((2000, 2000, 3), np.uint8)
    with pytest.raises(MediaError, match=r"needs \d+ tokens \(\d+ visual\) but the context holds 1000"):
        vlm.processor(_user({"image": big}), max_length=1000)


def test_truncation_never_cuts_a_vision_block(vlm):
    msgs = [{"role": "user", "content": [{"text": "first question " * 10}, {"image": _png(112, 112)},
                                         {"text": "second " * 30}, {"image": _png(56, 56)}, {"text": "end"}]}]
    full = vlm.processor(msgs)
    sp = vlm.tokenizer.special_ids
    full_ids = full.input_ids[0].tolist()
    n, start = len(full_ids), full_ids.index(sp["<|vision_start|>"])
    limit = n - (start + 5)  # the cut would fall 5 tokens into the first vision block
    t = vlm.processor(msgs, truncation=True, max_length=limit)
    ids = t.input_ids[0].tolist()
    assert len(ids) <= limit
    # the first image (16 tokens) was dropped whole; the remaining block is complete
    assert ids.count(sp["<|image_pad|>"]) == 4 and t.image_grid_thw.tolist() == [[1, 4, 4]]
    assert ids.count(sp["<|vision_start|>"]) == ids.count(sp["<|vision_end|>"]) == 1
    assert ids[0] != sp["<|image_pad|>"] and len(t.media[0]) == 1
    assert ids == full_ids[full_ids.index(sp["<|vision_end|>"]) + 1:]


def test_processor_defaults_come_from_preprocessor_config(ref_dir, tmp_path):
    import json
    import shutil
    d = tmp_path / "pp"
    shutil.copytree(ref_dir[0], d)
    (d / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 100352,
                                                            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    v = qwenvl.load(d)
    b = v.processor(_user({"image": np.full((480, 640, 3), 255, np.uint8)}))
    assert b.media[0][0].resized_size == smart_resize(480, 640, max_pixels=100352)
    assert torch.allclose(b.pixel_values, torch.ones_like(b.pixel_values))  # (1 - 0.5) / 0.5


def test_remote_images_when_enabled(vlm, tmp_path):
    import functools
    import http.server
    import threading

    from qwenvl.processor import Processor
    (tmp_path / "ok.png").write_bytes(_png(80, 60))
    (tmp_path / "big.png").write_bytes(_png(80, 60) + b"\x00" * 5000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        p = Processor(vlm.tokenizer, vlm.config, allow_remote_media=True, max_remote_bytes=4000)
        b = p(_user({"image": f"{base}/ok.png"}))
        assert b.media[0][0].original_size == (60, 80)
        with pytest.raises(MediaError, match="larger than the 4000 byte cap"):
            p(_user({"image": f"{base}/big.png"}))
        with pytest.raises(MediaError, match="could not fetch"):
            p(_user({"image": f"{base}/missing.png"}))
    finally:
        srv.shutdown()
