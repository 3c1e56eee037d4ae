"""Constrained grounding decoding: the grammar, the per-step token masks, and generate(constraint=...)."""
import json

import pytest
import torch

import qwenvl
from qwenvl.tasks.constrained import GroundingGrammar, grounding_constraint, token_bytes
from qwenvl.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from qwenvl.tiny import write_tokenizer
    from qwenvl.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(build_tokenizer(), d)
    return Tokenizer.from_dir(d)


GOOD_BBOX = [
    '[{"bbox_2d": [1, 2, 30, 40], "label": "red cube"}]',
    '```json\n[\n\t{"bbox_2d": [765, 394, 891, 550], "label": "top right brown cake"},\n'
    '\t{"bbox_2d": [12, 9, 80, 99], "label": "小蛋糕"}\n]\n```',
    "[]",
    '[{"bbox_2d":[0,0,0,0],"label":""}]',
]
BAD_BBOX = [
    '[{"bbox_2d": [1, 2, 30], "label": "a"}]',  # three numbers
    '[{"point_2d": [1, 2], "label": "a"}]',  # other kind
    '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, ]',  # trailing comma
    '{"bbox_2d": [1, 2, 3, 4], "label": "a"}',  # not a list
    '[{"bbox_2d": [-1, 2, 3, 4], "label": "a"}]',  # negative
    'Sure! [{"bbox_2d": [1, 2, 3, 4], "label": "a"}]',  # prose
    '[{"bbox_2d": [01, 2, 3, 4], "label": "a"}]',  # leading zero: not JSON
]


@pytest.mark.parametrize("text", GOOD_BBOX)
def test_grammar_accepts_model_shapes(tok, text):
    g = GroundingGrammar(tok, "bbox")
    assert g.accepting(g.feed(g.initial, text.encode()))


@pytest.mark.parametrize("text", BAD_BBOX)
def test_grammar_rejects_other_shapes(tok, text):
    g = GroundingGrammar(tok, "bbox")
    st = g.feed(g.initial, text.encode())
    assert not g.accepting(st)


def test_labels_are_well_formed_utf8(tok):
    g = GroundingGrammar(tok, "bbox")
    head = b'[{"bbox_2d": [1, 2, 3, 4], "label": "'
    assert g.feed(g.initial, head + "蛋糕 é".encode())
    assert g.feed(g.initial, head + b"\xe8\x9b")  # a partial sequence may still complete
    assert not g.feed(g.initial, head + b"\xe8A")  # a lead byte followed by ASCII is not UTF-8
    assert not g.feed(g.initial, head + b"\xff")


def test_point_grammar(tok):
    g = GroundingGrammar(tok, "point")
    assert g.accepting(g.feed(g.initial, b'[{"point_2d": [284, 305], "label": "rolling pin"}]'))
    assert not g.feed(g.initial, b'[{"bbox_2d": [')
    with pytest.raises(ValueError, match="bbox"):
        GroundingGrammar(tok, "polygon")


def _walk(tok, kind, seed, steps=400):
    """Greedy decoding with random logits under the constraint: returns (text bytes, stopped)."""
    stop = tok.im_end_id
    c = grounding_constraint(tok, kind, {stop})
    gen = torch.Generator().manual_seed(seed)
    data = b""
    for _ in range(steps):
        logits = torch.randn(tok.vocab_size, generator=gen)
        logits[stop] += 2.0  # a model keen to stop early must still finish the list
        nxt = int(c.mask(logits).argmax())
        if nxt == stop:
            return data, True
        data += token_bytes(tok, nxt)
        c.advance(token_bytes(tok, nxt))
        assert c.states, data  # never leaves the grammar
    return data, False


@pytest.mark.parametrize("kind", ["bbox", "point"])
def test_random_walks_stay_grammatical_and_stop_only_when_complete(tok, kind):
    from qwenvl.tasks.parse import parse_grounding

    stopped = 0
    for seed in range(25):
        data, done = _walk(tok, kind, seed)
        if done:
            stopped += 1
            text = data.decode("utf-8", errors="replace")
            dets = parse_grounding(text)
            body = text.strip().removeprefix("```json").removesuffix("```")
            assert len(dets) == len(json.loads(body))
            key = "bbox" if kind == "bbox" else "point"
            assert all(getattr(d, key) is not None for d in dets)
    assert stopped >= 5  # random logits do reach the end of short lists


def test_generate_with_constraint(ref_dir):
    path, _, _ = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32)
    msgs = [{"role": "user", "content": "find the cube"}]
    g = vlm.generate(msgs, constraint="bbox", max_new_tokens=40)
    gram = GroundingGrammar(vlm.tokenizer, "bbox")
    st = gram.feed(gram.initial, g.text.encode())
    assert st, g.text
    if g.finish_reason == "stop":
        assert gram.accepting(st)
    with pytest.raises(ValueError, match="constraint"):
        vlm.generate(msgs, constraint="yaml")
