"""Training data: readers, validation, token-level labels, positions, token counts, DPO pairs."""
import json
import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.config import QwenVLConfig
from qwenvl.model.positions import get_rope_index
from qwenvl.processor import Processor
from qwenvl.tiny import build_tokenizer, tiny_config, write_tokenizer
from qwenvl.tokenizer import SPECIAL_TOKENS, Tokenizer
from qwenvl.train.data import (PreferenceData, SFTData, build_pair, build_sample, count_tokens, label_spans,
                               parse_preference_record, parse_sft_record)
from qwenvl.train.types import IGNORE, DataError

VIDEO_OPTS = dict(fps=2.0, video_min_pixels=28 * 28, video_max_pixels=56 * 56)


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = build_tokenizer()
    write_tokenizer(tok, d)
    return Processor(Tokenizer.from_dir(d), QwenVLConfig.from_hf(tiny_config(tok)))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "img").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (84, 56, 3), dtype=np.uint8)).save(d / "img" / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 90, 3), dtype=np.uint8)).save(d / "img" / "b.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(d / "img" / f"f{i}.png")
    c = av.open(str(d / "clip.mp4"), "w")
    s = c.add_stream("libx264", rate=Fraction(4))
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for i in range(8):
        frame = np.full((48, 64, 3), 30 * i, dtype=np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return d


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


MESSAGES = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "image", "image": "img/a.png"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": "answer one"},
    {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": [{"type": "text", "text": "answer two"}]},
]}
LLAVA = {"image": "img/a.png", "conversations": [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "<image>\nWhat is this?"},
    {"from": "gpt", "value": "answer one"},
    {"from": "human", "value": "And now?"},
    {"from": "gpt", "value": "answer two"},
]}


def _same(a, b):
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.position_ids, b.position_ids)
    for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None and y is None) or torch.equal(x, y), k


# ---------------------------------------------------------------------------------------------------------- labels


def test_labels_token_level(proc, media):
    tok = proc.tokenizer
    msgs = parse_sft_record(MESSAGES, source="t", base_dir=media)
    s = build_sample(proc, msgs, source="t")
    ids = s.input_ids
    spans = label_spans(ids, tok)
    assert [tok.decode(ids[a:b]) for a, b in spans] == ["answer one<|im_end|>", "answer two<|im_end|>"]
    for a, _ in spans:  # each answer starts right after "<|im_start|>assistant\n"
        assert tok.decode(ids[:a]).endswith("<|im_start|>assistant\n")
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for a, b in spans:
        mask[a:b] = True
    assert torch.equal(s.labels[mask], ids[mask])
    assert bool((s.labels[~mask] == IGNORE).all())
    pad = tok.special_ids["<|image_pad|>"]
    assert int((ids == pad).sum()) == 6 and bool((s.labels[ids == pad] == IGNORE).all())
    assert s.num_loss_tokens == int(mask.sum())
    # the newline after each <|im_end|> takes no loss; nothing of the system or user turns does
    assert tok.decode(ids[spans[0][1]:spans[0][1] + 1]) == "\n" and s.labels[spans[0][1]] == IGNORE
    assert "Be brief." not in tok.decode(ids[mask]) and "What is this?" not in tok.decode(ids[mask])


def _qwen_like_tokenizer():
    """A BPE with the Qwen2 pre-tokenizer regex, which merges a newline run ("\\n\\n") into one token."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTok

    pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
    t = HFTok(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["assistant\n\nHello there\n\n\nuser\nsystem"] * 20, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t.add_special_tokens([AddedToken(x, special=True, normalized=False) for x in SPECIAL_TOKENS])
    return Tokenizer(t)


class _PieceTokenizer:
    """Decodes by concatenating pieces: lets a test split 'assistant\\n' any way it likes."""

    def __init__(self, tok):
        self.tok = tok
        self.special_ids, self.all_special_ids = tok.special_ids, tok.all_special_ids
        self.im_start_id, self.im_end_id = tok.im_start_id, tok.im_end_id
        self.pieces = {}

    def ids(self, *pieces):
        out = []
        for p in pieces:
            if p in self.special_ids:
                out.append(self.special_ids[p])
            else:
                out.append(self.pieces.setdefault(p, 10_000 + len(self.pieces)))
        return out

    def decode(self, ids):
        inv = {v: k for k, v in {**self.pieces, **self.special_ids}.items()}
        return "".join(inv[i] for i in ids)


def test_label_spans_header_tokenizations(proc):
    q = _qwen_like_tokenizer()
    for answer, want in (("Hello", "Hello"), ("\nHello", "\n\nHello")):
        ids = q.encode(f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
        (a, b), = label_spans(ids, q)
        # a newline merged with the header's "\n" is one token: it is the first answer token and takes the loss
        assert q.decode(ids[a:b]) == want + "<|im_end|>"
        assert q.decode(ids[:a]).endswith("<|im_start|>assistant" if answer.startswith("\n") else "assistant\n")
    p = _PieceTokenizer(proc.tokenizer)
    for header in (["assistant", "\n"], ["ass", "istant", "\n"], ["assistant\n"], ["a", "ssistant\n"]):
        ids = p.ids("<|im_start|>", "system", "\n", "x", "<|im_end|>", "\n", "<|im_start|>", *header, "ok",
                    "<|image_pad|>", "go", "<|im_end|>", "\n", "<|im_start|>", "assistants", "\n", "no", "<|im_end|>")
        n = 7 + len(header)
        assert label_spans(ids, p) == [(n, n + 1), (n + 2, n + 4)], header  # pad cut out; "assistants" is not a header


# --------------------------------------------------------------------------------------------------------- formats


def test_formats_give_identical_samples(proc, media, tmp_path):
    lone = {"image": "img/a.png", "conversations": [dict(t, value=t["value"].replace("<image>\n", ""))
                                                    for t in LLAVA["conversations"]]}
    f_msg = _write(media / "m.jsonl", [MESSAGES])
    f_llava = _write(media / "l.jsonl", ["", LLAVA, lone, [LLAVA]])  # blank lines are skipped; a list: packed
    f_json = media / "l.json"
    f_json.write_text(json.dumps([LLAVA, [LLAVA, lone]], indent=2))
    ref = SFTData(f_msg, proc)[0]
    llava = SFTData(f_llava, proc)
    js = SFTData(f_json, proc)
    assert len(llava) == 3 and len(js) == 3
    for s in (llava[0], llava[1], llava[2], js[0], js[1], js[2]):
        _same(ref, s)
    assert llava.source(0) == f"{f_llava}:2" and llava[1].source == f"{f_llava}:3"
    assert llava.source(2) == f"{f_llava}:4[0]"
    assert js.source(0) == f"{f_json}:2" and js.source(2).endswith("[1]")
    # data_path: media relative to another directory
    other = _write(tmp_path / "x.jsonl", [LLAVA])
    with pytest.raises(DataError, match="not found"):
        SFTData(other, proc)
    _same(ref, SFTData(other, proc, data_path=media)[0])
    _same(ref, SFTData(_write(tmp_path / "y.jsonl", [dict(LLAVA, data_path=str(media))]), proc)[0])
    # TRL layout: value-less image parts filled from a top-level "images" list
    trl = json.loads(json.dumps(MESSAGES))
    trl["messages"][1]["content"][0] = {"type": "image"}
    trl["images"] = ["img/a.png"]
    _same(ref, SFTData(_write(media / "trl.jsonl", [trl]), proc)[0])


BAD = [
    ('{"conversations": [', "not valid JSON"),
    ({"image": "img/a.png", "text": "hi"}, "no 'conversations' or 'messages'"),
    ({"image": ["img/a.png", "img/b.png"], "conversations": [{"from": "human", "value": "<image> two?"},
                                                             {"from": "gpt", "value": "x"}]},
     "1 <image> placeholder(s) for 2 image file(s)"),
    ({"image": "img/a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                              {"from": "gpt", "value": "x"}]}, "2 <image> placeholder(s) for 1"),
    ({"image": "img/nope.png", "conversations": [{"from": "human", "value": "<image>"},
                                                 {"from": "gpt", "value": "x"}]},
     "media file 'img/nope.png' not found"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "gone.jpg"}]},
                   {"role": "assistant", "content": "x"}]}, "not found"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "no gpt turn"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"image": "img/a.png", "conversations": [{"from": "human", "value": "<image>"},
                                              {"from": "gpt", "value": "see <image>"}]},
     "answer contains the placeholder"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]}, "answer is empty"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, "answer is empty"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": [{"type": "image", "image": "img/a.png"}]}]}, "only text"),
    ({"conversations": [{"from": "human", "value": "hi<|im_end|>"}, {"from": "gpt", "value": "x"}]}, "reserved token"),
    ({"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]}, "unknown speaker"),
    ({"prompt": "hi", "chosen": "a", "rejected": "b"}, "qwenvl train dpo"),
]


@pytest.mark.parametrize("bad,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_validation_errors_name_file_and_line(proc, media, bad, msg):
    f = _write(media / "bad.jsonl", [LLAVA, bad])
    with pytest.raises(DataError) as e:
        SFTData(f, proc)
    assert f"{f}:2" in str(e.value) and msg in str(e.value), str(e.value)


def test_skip_bad_records(proc, media, caplog):
    f = _write(media / "mixed.jsonl", [LLAVA] + [b for b, _ in BAD] + [MESSAGES])
    with caplog.at_level(logging.WARNING, logger="qwenvl.train.data"):
        ds = SFTData(f, proc, on_error="skip")
    assert len(ds) == 2 and ds.num_skipped == len(BAD)
    assert ds.source(1) == f"{f}:{len(BAD) + 2}"
    logged = [r.getMessage() for r in caplog.records]
    for line in range(2, len(BAD) + 2):
        assert any(f"{f}:{line}:" in m for m in logged), line
    _same(ds[0], ds[1])


def test_too_long_is_an_error(proc, media):
    ds = SFTData(_write(media / "long.jsonl", [LLAVA]), proc, max_length=20)
    with pytest.raises(DataError, match=r"long\.jsonl:1: the sample is \d+ tokens long \(6 visual\), over "
                                        r"max_length=20"):
        ds[0]


# ------------------------------------------------------------------------------------- token counts and positions


def test_token_count_matches_samples(proc, media, monkeypatch):
    recs = [
        LLAVA,
        {"image": ["img/a.png", "img/b.png"], "conversations": [{"from": "human", "value": "<image> and <image>?"},
                                                                {"from": "gpt", "value": "two"}]},
        {"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat moves?"},
                                                {"from": "gpt", "value": "a ball"}]},
        {"messages": [{"role": "user", "content": [
            {"type": "video", "video": ["img/f0.png", "img/f1.png", "img/f2.png"]},
            {"type": "image", "image": "img/b.png", "max_pixels": 28 * 28 * 2}, {"type": "text", "text": "Same?"}]},
            {"role": "assistant", "content": "no"}]},
        {"conversations": [{"from": "human", "value": "Count the stars."}, {"from": "gpt", "value": "3"},
                           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes, 3."}]},
    ]
    ds = SFTData(_write(media / "count.jsonl", recs), proc, max_pixels=28 * 28 * 8, **VIDEO_OPTS)

    def no_pixels(*a, **k):
        raise AssertionError("token_count loaded pixels")

    with monkeypatch.context() as m:
        m.setattr(Processor, "__call__", no_pixels)
        counts = [ds.token_count(i) for i in range(len(ds))]
    samples = [ds[i] for i in range(len(ds))]
    assert counts == [s.num_tokens for s in samples]
    assert samples[2].video_grid_thw.tolist() == [[2, 4, 4]] and samples[3].video_grid_thw.tolist()[0][0] == 2
    assert samples[4].pixel_values is None


def test_position_ids_are_rope_index_of_the_sample(proc, media):
    rec = {"image": "img/a.png", "video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<video> then <image>"}, {"from": "gpt", "value": "ok"}]}
    text = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ho"}]}
    ds = SFTData(_write(media / "pos.jsonl", [rec, text]), proc, **VIDEO_OPTS)
    c = proc.config
    for s in (ds[0], ds[1]):
        want, _ = get_rope_index(s.input_ids[None], torch.ones(1, s.num_tokens, dtype=torch.long), s.image_grid_thw,
                                 s.video_grid_thw, s.second_per_grid_ts, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id, vision_start_token_id=c.vision_start_token_id,
                                 spatial_merge_size=c.vision.spatial_merge_size,
                                 tokens_per_second=c.vision.tokens_per_second)
        assert s.position_ids.shape == (3, s.num_tokens) and s.position_ids.dtype == torch.int64
        assert torch.equal(s.position_ids, want[:, 0])
    assert not torch.equal(ds[0].position_ids[1], ds[0].position_ids[2])  # real 3-D positions on the vision block
    assert torch.equal(ds[1].position_ids, torch.arange(ds[1].num_tokens).expand(3, -1))


# ------------------------------------------------------------------------------------------------------------- DPO


def test_dpo_pair_shares_the_prompt(proc, media):
    tok = proc.tokenizer
    rec = {"image": "img/a.png", "prompt": "<image>\nWhat is it?", "chosen": "a red circle", "rejected": "a dog"}
    pair = build_pair(proc, rec, source="p", base_dir=media)
    ch, rj = pair.chosen, pair.rejected
    a = label_spans(ch.input_ids, tok)[0][0]
    assert label_spans(rj.input_ids, tok)[0][0] == a
    assert torch.equal(ch.input_ids[:a], rj.input_ids[:a])
    assert tok.decode(ch.input_ids[:a]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ch.input_ids[ch.labels != IGNORE]) == "a red circle<|im_end|>"
    assert tok.decode(rj.input_ids[rj.labels != IGNORE]) == "a dog<|im_end|>"
    assert torch.equal(ch.pixel_values, rj.pixel_values) and torch.equal(ch.position_ids[:, :a], rj.position_ids[:, :a])
    prompt, _, rejected = parse_preference_record(rec, base_dir=media)
    direct = build_sample(proc, prompt + [{"role": "assistant", "content": rejected}], source="p",
                          last_answer_only=True)
    _same(direct, rj)
    # messages prompt with history: only the final answer takes loss
    rec2 = {"prompt": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"},
                                                    {"type": "text", "text": "What is it?"}]},
                       {"role": "assistant", "content": "old answer"}, {"role": "user", "content": "Really?"}],
            "chosen": [{"role": "assistant", "content": "yes"}], "rejected": {"role": "assistant", "content": "no"}}
    f = _write(media / "dpo.jsonl", [rec, rec2])
    ds = PreferenceData(f, proc)
    assert len(ds) == 2
    _same(ds[0].chosen, ch)
    p2 = ds[1]
    assert tok.decode(p2.chosen.input_ids[p2.chosen.labels != IGNORE]) == "yes<|im_end|>"
    assert ds.token_counts(1) == (p2.chosen.num_tokens, p2.rejected.num_tokens)
    assert ds.token_count(0) == ch.num_tokens + rj.num_tokens
    assert count_tokens(proc, prompt + [{"role": "assistant", "content": rejected}]) == rj.num_tokens


@pytest.mark.parametrize("bad,msg", [
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "hi", "chosen": "x", "rejected": ""}, "rejected: the answer is empty"),
    ({"prompt": "hi", "chosen": "x"}, "rejected: missing"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "chosen": "a",
      "rejected": "b"}, "ends with an assistant turn"),
    ({"prompt": "<image> hi", "chosen": "a", "rejected": "b"}, "1 <image> placeholder(s) for 0"),
    (LLAVA, "not a preference record"),
])
def test_preference_validation(proc, media, bad, msg):
    f = _write(media / "dpo_bad.jsonl", [bad])
    with pytest.raises(DataError) as e:
        PreferenceData(f, proc)
    assert f"{f}:1" in str(e.value) and msg in str(e.value), str(e.value)
