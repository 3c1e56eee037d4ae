"""The one-call task API: official prompts in, results in the user's own coordinates out.

Model answers are replayed (the tiny random model cannot ground anything); the processor, media sizes and
coordinate mapping are the real ones. The last tests run the real tiny model end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl import tasks
from qwenvl.generate import Generation, Usage

MAXP = 256 * 28 * 28  # 1000x700 -> resized 532x364 (smart_resize: beta = sqrt(700000 / 200704))


class Replay:
    """A VLM whose answers are recorded text: the real processor prepares the inputs (sizes, prompt)."""

    def __init__(self, vlm, text):
        self.vlm, self.text, self.seen = vlm, text, []

    def generate(self, messages, **options):
        proc = {k: options[k] for k in ("min_pixels", "max_pixels", "fps") if k in options}
        batch = self.vlm.processor(messages, **proc)
        self.seen.append((messages, options, batch.prompts[0]))
        return Generation(self.text, [], "stop", Usage(int(batch.input_ids.shape[1]), 0, 1), batch.media[0])


@pytest.fixture(scope="module")
def vlm(ref_dir):
    return qwenvl.load(ref_dir[0], dtype=torch.float32)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 1000, 3), dtype=np.uint8)).save(p)
    return p


def test_ground_maps_boxes_to_the_original_image(vlm, photo):
    r = Replay(vlm, 'Here you go:\n```json\n[\n\t{"bbox_2d": [266, 182, 532, 364], "label": "right half"},\n'
                    '\t{"bbox_2d": [133, 91, 0, 0], "label": "swapped"}\n]\n```')
    res = tasks.ground(r, photo, "the right half", max_pixels=MAXP)
    assert res.model_size == (364, 532) and res.original_size == (700, 1000)
    assert [d.label for d in res.detections] == ["right half", "swapped"]
    assert res.detections[0].bbox == pytest.approx((500, 350, 1000, 700))
    assert res.detections[1].bbox == pytest.approx((0, 0, 250, 175))
    msgs, opts, prompt = r.seen[0]
    assert "Locate the right half, output its bbox coordinates using JSON format." in prompt
    assert opts["max_new_tokens"] == tasks.api.BUDGET["ground"]
    d = json.loads(res.to_json())
    assert d["image_size"] == [1000, 700] and d["model_size"] == [532, 364]
    assert d["objects"][0]["bbox_2d"] == [500.0, 350.0, 1000.0, 700.0] and d["task"] == "ground"
    img = res.draw(photo)
    assert img.size == (1000, 700)


def test_ground_category_and_argument_errors(vlm, photo):
    r = Replay(vlm, '[{"bbox_2d": [0, 0, 600, 400], "label": "cake"}]')  # past the edge: clipped
    res = tasks.ground(r, photo, category="cake", max_pixels=MAXP)
    assert res.detections[0].bbox == pytest.approx((0, 0, 1000, 700))
    assert "Outline the position of each cake and output all the coordinates in JSON format." in r.seen[0][2]
    with pytest.raises(ValueError, match="exactly one"):
        tasks.ground(r, photo)


def test_unparseable_answer_is_kept_with_an_error(vlm, photo):
    res = tasks.ground(Replay(vlm, "I cannot see anything like that."), photo, "a dragon")
    assert res.detections == [] and res.error and res.text == "I cannot see anything like that."
    assert json.loads(res.to_json())["error"] == res.error


def test_point_and_count(vlm, photo):
    res = tasks.point(Replay(vlm, '<points x1="266" y1="182" alt="pin">rolling pin</points>'), photo, "the pin",
                      max_pixels=MAXP)
    assert res.detections[0].point == pytest.approx((500, 350))
    res = tasks.count(Replay(vlm, '```json\n[{"bbox_2d": [1, 1, 5, 5], "label": "cake"}, '
                                  '{"bbox_2d": [6, 6, 9, 9], "label": "cake"}]\n```\nThere are 2 cakes in the image.'),
                      photo, "cake")
    assert res.count == 2 and len(res.detections) == 2 and json.loads(res.to_json())["count"] == 2


def test_document_blocks_in_page_coordinates(vlm, photo):
    html = ('```html\n<html><body>\n<h1 data-bbox="0 0 532 91">Title</h1>\n'
            '<table data-bbox="0 182 266 364"><tr><td>a</td><td>b</td></tr></table>\n</body></html>\n```')
    r = Replay(vlm, html)
    res = tasks.read_document(r, photo, max_pixels=MAXP)
    assert [b.kind for b in res.blocks] == ["h1", "table"]
    assert res.blocks[0].bbox == pytest.approx((0, 0, 1000, 175))
    assert res.blocks[1].rows == [["a", "b"]]
    assert "# Title" in res.markdown and "<table" in res.html and "data-bbox" not in res.html
    msgs, _, prompt = r.seen[0]
    assert msgs[0]["role"] == "system" and "QwenVL Document Parser HTML" in msgs[0]["content"]
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_text_tasks(vlm, photo):
    res = tasks.spot_text(Replay(vlm, '[{"bbox_2d": [0, 0, 266, 182], "text_content": "HELLO",}]'), photo,
                          max_pixels=MAXP)
    assert res.items[0].text == "HELLO" and res.items[0].bbox == pytest.approx((0, 0, 500, 350))
    res = tasks.read_text(Replay(vlm, "HELLO\nWORLD"), photo)
    assert res.lines == ["HELLO", "WORLD"]
    r = Replay(vlm, 'Sure.\n```json\n{"company": "ACME", "total": "12.50"}\n```')
    res = tasks.extract(r, photo, ["company", "date", "total"])
    assert res.values == {"company": "ACME", "date": None, "total": "12.50"}
    assert 'Extract the key-value information in the format:{"company": "", "date": "", "total": ""}' in r.seen[0][2]


def test_video_tasks(vlm):
    frames = [Image.new("RGB", (84, 56), (i * 30, 0, 0)) for i in range(8)]
    r = Replay(vlm, "The given query happens in 1.5 - 3.0 seconds.")
    res = tasks.locate_event(r, frames, "the screen turns red", fps=2.0)
    assert res.spans == [(1.5, 3.0)] and res.error is None
    assert "Give the query: 'the screen turns red', when does the described content occur in the video?" in \
        r.seen[0][2]
    res = tasks.dense_captions(Replay(vlm, '[{"start_time": "00:01.50", "end_time": "00:03.00", '
                                           '"description": "red"}]'), frames)
    assert res.spans == [(1.5, 3.0, "red")]


def test_next_action_maps_to_device_pixels(vlm):
    shot = Image.new("RGB", (1080, 2400), "white")
    r = Replay(vlm, 'I will tap it.\n<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", '
                    '"coordinate": [546, 1204]}}\n</tool_call>')
    res = tasks.next_action(r, shot, "open settings", kind="mobile")
    assert res.model_size == (2408, 1092) and res.action.kind == "click"
    assert res.action.coordinate == pytest.approx((540, 1200), abs=1)
    assert "The screen's resolution is 1092x2408." in r.seen[0][0][0]["content"]
    res = tasks.next_action(Replay(vlm, '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "fly"}}\n'
                                        '</tool_call>'), shot, "x", kind="mobile")
    assert res.action is None and "fly" in res.error
    with pytest.raises(ValueError, match="kind"):
        tasks.next_action(r, shot, "x", kind="tv")


def test_structured_auto_detection(vlm, photo):
    batch = vlm.processor([{"role": "user", "content": [{"image": str(photo), "max_pixels": MAXP}, {"text": "x"}]}])
    media = batch.media[0]
    s = tasks.structured('[{"bbox_2d": [266, 182, 532, 364], "label": "a"}]', media)
    assert s["objects"][0]["bbox_2d"] == [500.0, 350.0, 1000.0, 700.0]
    assert tasks.structured('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', media) == \
        {"tool_calls": [{"name": "f", "arguments": {}}]}
    assert tasks.structured("just words", media) is None


def test_real_tiny_model_end_to_end(vlm, photo):
    res = tasks.ground(vlm, photo, "the cat", max_new_tokens=6)
    assert res.text is not None and res.finish_reason in ("stop", "length")
    json.loads(res.to_json())
    res = tasks.ground(vlm, photo, category="cat", constrained=True, max_new_tokens=30)
    assert res.text.lstrip().startswith(("[", "`")), res.text


def test_cli_generate_json_and_draw(ref_dir, photo, tmp_path):
    out = tmp_path / "drawn.png"
    r = subprocess.run([sys.executable, "-m", "qwenvl", "generate", "-m", str(ref_dir[0]), "--image", str(photo),
                        "--prompt", "find it", "--max-new-tokens", "12", "--json", "--constrain", "bbox",
                        "--draw", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["text"].lstrip().startswith(("[", "`"))
    assert Image.open(out).size == (1000, 700)
    r = subprocess.run([sys.executable, "-m", "qwenvl", "generate", "-m", str(ref_dir[0]), "--prompt", "x",
                        "--draw", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--draw needs an --image" in r.stderr and len(r.stderr.strip().splitlines()) == 1
