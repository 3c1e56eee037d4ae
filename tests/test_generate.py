"""Greedy generation equals transformers 4.51.3 generate(); batching equals running rows alone; API behaviour."""
import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl

N = 32


@pytest.fixture(scope="module")
def loaded(ref_dir):
    path, hf, cfg = ref_dir
    return qwenvl.load(path, dtype=torch.float32), hf


def _img(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _frames(n, h, w, seed):
    base = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [Image.fromarray(np.roll(base, 5 * k, axis=0)) for k in range(n)]


CONVS = {
    "text": [{"role": "user", "content": "Tell me a story about 42 red circles."}],
    "image": [{"role": "user", "content": [{"image": _img(150, 220, 1)}, {"text": "Describe."}]}],
    "video": [{"role": "user", "content": [{"video": _frames(6, 84, 112, 2), "fps": 0.5}, {"text": "What moves?"}]}],
    "images": [{"role": "user", "content": [{"image": _img(90, 300, 3)}, {"text": "vs"}, {"image": _img(200, 60, 4)}]}],
}


def _hf_generate(hf, batch, n=N):
    inputs = {k: v for k, v in batch.model_inputs().items() if v is not None}
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=n, do_sample=False, repetition_penalty=1.0, top_k=None, top_p=None,
                          temperature=None)
    return out[:, batch.input_ids.shape[1]:]


def _trim(row, stop_ids, pad):
    out = []
    for t in row.tolist():
        out.append(t)
        if t in stop_ids:
            break
    return out


@pytest.mark.parametrize("case", list(CONVS))
def test_greedy_tokens_equal_reference(loaded, case):
    vlm, hf = loaded
    batch = vlm.processor(CONVS[case])
    ref = _trim(_hf_generate(hf, batch)[0], vlm.stop_ids, vlm.tokenizer.pad_id)
    g = vlm.generate(CONVS[case], max_new_tokens=N, temperature=0, repetition_penalty=1.0)
    assert g.token_ids == ref
    assert g.finish_reason == ("stop" if ref[-1] in vlm.stop_ids else "length")
    assert g.usage.completion_tokens == len(ref) and g.usage.prompt_tokens == batch.input_ids.shape[1]


def test_batch_of_three_equals_reference_and_alone(loaded):
    vlm, hf = loaded
    convs = [CONVS["image"], CONVS["text"], CONVS["video"]]
    batch = vlm.processor(convs)
    ref = _hf_generate(hf, batch)
    gens = vlm.generate(convs, max_new_tokens=N, temperature=0, repetition_penalty=1.0)
    for i, g in enumerate(gens):
        assert g.token_ids == _trim(ref[i], vlm.stop_ids, vlm.tokenizer.pad_id)
        alone = vlm.generate(convs[i], max_new_tokens=N, temperature=0, repetition_penalty=1.0)
        assert alone.token_ids == g.token_ids and alone.text == g.text


def test_rows_of_different_lengths_finish_independently(loaded):
    vlm, _ = loaded
    convs = [CONVS["text"], CONVS["image"]]
    a = vlm.generate(convs, max_new_tokens=5, temperature=0)
    b = vlm.generate(convs[0], max_new_tokens=12, temperature=0)
    assert len(a[0].token_ids) <= 5 and b.token_ids[:len(a[0].token_ids)] == a[0].token_ids


def test_seeded_sampling_reproducible_and_topk1_is_greedy(loaded):
    vlm, _ = loaded
    conv = CONVS["image"]
    s1 = vlm.generate(conv, max_new_tokens=16, temperature=1.0, seed=7)
    s2 = vlm.generate(conv, max_new_tokens=16, temperature=1.0, seed=7)
    s3 = vlm.generate(conv, max_new_tokens=16, temperature=1.0, seed=8)
    assert s1.token_ids == s2.token_ids and s1.token_ids != s3.token_ids
    greedy = vlm.generate(conv, max_new_tokens=16, temperature=0)
    topk1 = vlm.generate(conv, max_new_tokens=16, temperature=0.9, top_k=1, seed=3)
    assert greedy.token_ids == topk1.token_ids


def test_stream_concatenates_to_generate(loaded):
    vlm, _ = loaded
    for conv in (CONVS["text"], CONVS["video"]):
        full = vlm.generate(conv, max_new_tokens=24, temperature=0)
        it = vlm.stream(conv, max_new_tokens=24, temperature=0)
        deltas = []
        while True:
            try:
                deltas.append(next(it))
            except StopIteration as stop:
                final = stop.value
                break
        assert "".join(deltas) == full.text == final.text
        assert final.token_ids == full.token_ids


def test_stop_strings_and_stop_token_ids(loaded):
    vlm, _ = loaded
    conv = CONVS["text"]
    full = vlm.generate(conv, max_new_tokens=24, temperature=0)
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = vlm.generate(conv, max_new_tokens=24, temperature=0, stop=[stop])
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop" and cut.stop == stop
    tok = full.token_ids[4]
    st = vlm.generate(conv, max_new_tokens=24, temperature=0, stop_token_ids=[tok])
    assert st.token_ids == full.token_ids[:full.token_ids.index(tok) + 1] and st.finish_reason == "stop"


def test_min_new_tokens_and_usage_media(loaded):
    vlm, _ = loaded
    g = vlm.generate(CONVS["images"], max_new_tokens=3, min_new_tokens=3, temperature=0)
    assert len(g.token_ids) == 3 and g.finish_reason == "length"
    assert g.usage.visual_tokens > 0 and [m.kind for m in g.media] == ["image", "image"]
    assert g.media[0].original_size == (90, 300)


def test_bad_options_are_clear(loaded):
    vlm, _ = loaded
    with pytest.raises(TypeError, match="bogus"):
        vlm.generate(CONVS["text"], bogus=1)
    with pytest.raises(ValueError, match="top_p"):
        vlm.generate(CONVS["text"], top_p=0)


def test_static_decode_equals_eager(loaded):
    """The fixed-shape decode step that CUDA graphs replay (attention over the whole cache with a mask, the slot
    in a device tensor) gives the eager path's tokens, also when rows leave the batch at different steps."""
    from qwenvl.generate import generate
    from qwenvl.sampling import SamplingParams

    vlm, _ = loaded
    convs = [CONVS["image"], CONVS["text"], CONVS["video"]]
    batch = vlm.processor(convs)
    params = [SamplingParams(max_new_tokens=n) for n in (N, 7, 19)]  # rows finish at different steps
    eager = generate(vlm.model, vlm.tokenizer, batch, params, set(), decode="eager")  # no stop: exact lengths
    static = generate(vlm.model, vlm.tokenizer, batch, params, set(), decode="static")
    assert [g.token_ids for g in static] == [g.token_ids for g in eager]
    assert [len(g.token_ids) for g in eager] == [N, 7, 19]
    with pytest.raises(ValueError, match="CUDA"):
        generate(vlm.model, vlm.tokenizer, batch, params, vlm.stop_ids, decode="graph")
    with pytest.raises(ValueError, match="decode mode"):
        generate(vlm.model, vlm.tokenizer, batch, params, vlm.stop_ids, decode="fast")
