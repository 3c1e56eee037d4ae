"""DPO (sequence log-probs, the sigmoid loss, reference log-probs) and data curation (filters, rejection
sampling). The expected numbers are worked out by hand in the comments."""
import functools
import json
import math

import pytest
import torch
from torch import nn

from qwenvl.train.curation import (DEFAULT_FILTERS, answers_of, count_scorer, empty_filter, exact_match_scorer,
                                   filter_records, grounding_filter, grounding_iou_scorer, placeholder_filter,
                                   rejection_sample, repetition_filter, truncation_filter)
from qwenvl.train.dpo import ReferenceLogps, dpo_loss, pair_logps_fn, sequence_logps
from qwenvl.train.types import IGNORE, PreferencePair, TrainSample

LN2 = math.log(2)


# --- sequence_logps -------------------------------------------------------------------------------------------

def _hand_logits():
    # position 0: logits [0, 0]      -> log p = [-ln 2, -ln 2]
    # position 1: logits [ln 3, 0]   -> p = [3/4, 1/4], log p = [ln(3/4), ln(1/4)]
    # position 2: logits [5, -5]     -> never used (nothing after the last position)
    return torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])


def test_sequence_logps_by_hand_with_shift():
    logits = _hand_logits()
    # labels[1] = 1 is predicted by position 0: -ln 2; labels[2] = 0 by position 1: ln(3/4); labels[0] unscored
    lp = sequence_logps(logits, torch.tensor([[IGNORE, 1, 0]]))
    assert lp.dtype == torch.float32 and lp.shape == (1,)
    assert lp.item() == pytest.approx(-LN2 + math.log(3 / 4), abs=1e-6)  # = ln(3/8)
    assert lp.item() == pytest.approx(math.log(3 / 8), abs=1e-6)
    # labels[0] is never scored, whatever it is (the shift)
    assert sequence_logps(logits, torch.tensor([[0, 1, 0]])).item() == pytest.approx(math.log(3 / 8), abs=1e-6)
    # labels[2] = 1 instead: -ln 2 + ln(1/4) = ln(1/8)
    assert sequence_logps(logits, torch.tensor([[IGNORE, 1, 1]])).item() == pytest.approx(math.log(1 / 8), abs=1e-6)


def test_sequence_logps_ignore_and_average():
    logits = _hand_logits()
    # only labels[2] = 0 counts: ln(3/4)
    assert sequence_logps(logits, torch.tensor([[IGNORE, IGNORE, 0]])).item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert sequence_logps(logits, torch.tensor([[7, IGNORE, IGNORE]])).item() == 0.0  # nothing labelled
    # average over the 2 labelled tokens: ln(3/8) / 2
    avg = sequence_logps(logits, torch.tensor([[IGNORE, 1, 0]]), average=True)
    assert avg.item() == pytest.approx(math.log(3 / 8) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        sequence_logps(logits, torch.tensor([[IGNORE, 2, 0]]))  # id 2 outside a vocabulary of 2
    with pytest.raises(ValueError):
        sequence_logps(logits[0], torch.tensor([IGNORE, 1, 0]))


def _naive(logits, labels):
    lp = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), -1)
    tgt = labels[:, 1:]
    mask = tgt != IGNORE
    return (lp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask).sum(1)


def test_sequence_logps_matches_naive_values_and_gradients_for_any_chunking():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 11, 17
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = IGNORE
    labels[2, 5:] = IGNORE
    x = logits.clone().requires_grad_()
    ref = _naive(x, labels)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    (ref * w).sum().backward()
    for chunk in (1, 3, 10, None):
        y = logits.clone().requires_grad_()
        out = sequence_logps(y, labels, chunk_tokens=chunk)
        assert torch.allclose(out, ref, atol=1e-12)
        (out * w).sum().backward()
        assert torch.allclose(y.grad, x.grad, atol=1e-12)
        assert torch.all(y.grad[:, -1] == 0)  # the last position predicts nothing
    small = logits[:2, :5, :4].clone().requires_grad_()
    lab = labels[:2, :5].clamp(max=3).masked_fill(labels[:2, :5] == IGNORE, IGNORE)
    assert torch.autograd.gradcheck(lambda t: sequence_logps(t, lab, chunk_tokens=2), (small,))


def test_sequence_logps_bf16_logits_are_scored_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 9, 50, generator=g) * 4).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 50, (2, 9), generator=g)
    out = sequence_logps(logits, labels, chunk_tokens=4)
    assert out.dtype == torch.float32
    assert torch.allclose(out, _naive(logits.detach().float(), labels), atol=1e-5)
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


# --- dpo_loss ---------------------------------------------------------------------------------------------------

def test_dpo_loss_by_hand():
    # pc - pr = -1 - (-3) = 2; rc - rr = 0; z = beta * 2
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)  # z = 1: -logsigmoid(1) = ln(1 + e^-1) = 0.3132617
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)
    # rewards: chosen 0.5 * (-1 - -2) = 0.5, rejected 0.5 * (-3 - -2) = -0.5, margin 1, accuracy 1
    assert m["rewards/chosen"] == pytest.approx(0.5) and m["rewards/rejected"] == pytest.approx(-0.5)
    assert m["rewards/margins"] == pytest.approx(1.0) and m["accuracy"] == 1.0
    assert m["logps/chosen"] == pytest.approx(-1.0) and m["logps/rejected"] == pytest.approx(-3.0)
    # beta scaling: beta = 1 gives z = 2: ln(1 + e^-2) = 0.1269280
    assert dpo_loss(pc, pr, rc, rr, beta=1.0)[0].item() == pytest.approx(0.1269280, abs=1e-6)
    # label smoothing 0.1 at z = 1: 0.9 ln(1 + e^-1) + 0.1 ln(1 + e) = ln(1 + e^-1) + 0.1 = 0.4132617
    # (ln(1 + e) = 1 + ln(1 + e^-1))
    assert dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)[0].item() == pytest.approx(0.4132617, abs=1e-6)


def test_dpo_loss_batch_mean_gradient_and_accuracy():
    # pair 1 as above (z = 1); pair 2 with chosen and rejected swapped (z = -1): ln(1 + e) = 1.3132617
    pc = torch.tensor([-1.0, -3.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0])
    loss, m = dpo_loss(pc, pr, ref, ref, beta=0.5)
    assert loss.item() == pytest.approx((0.3132617 + 1.3132617) / 2, abs=1e-6)
    assert m["accuracy"] == 0.5 and m["rewards/margins"] == pytest.approx(0.0)
    loss.backward()
    # d/d pc of -logsigmoid(z) / 2 = -beta * sigmoid(-z) / 2: pair 1: -0.5 * 0.2689414 / 2 = -0.0672354
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert pc.grad[0].item() == pytest.approx(-0.5 * sig(-1) / 2, abs=1e-6)
    assert pc.grad[1].item() == pytest.approx(-0.5 * sig(1) / 2, abs=1e-6)
    assert torch.allclose(pr.grad, -pc.grad)


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2), (2.0, 0.0)])
def test_dpo_loss_is_ln2_when_policy_equals_reference(beta, eps):
    lp = torch.tensor([-12.5, -3.0, -40.0])
    lr = torch.tensor([-20.0, -1.0, -41.0])
    loss, m = dpo_loss(lp, lr, lp.clone(), lr.clone(), beta=beta, label_smoothing=eps)
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    assert m["rewards/margins"] == 0.0 and m["accuracy"] == 0.0


def test_dpo_loss_argument_checks():
    t = torch.zeros(2)
    with pytest.raises(ValueError):
        dpo_loss(t, t, t, t, beta=0)
    with pytest.raises(ValueError):
        dpo_loss(t, t, t, t, label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(t, torch.zeros(3), t, t)


# --- reference log-probs and a tiny DPO run ---------------------------------------------------------------------

class TinyLM(nn.Module):
    def __init__(self, V=12, D=16):
        super().__init__()
        self.emb, self.out = nn.Embedding(V, D), nn.Linear(D, V)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


def _sample(ids, n_prompt, src=""):
    ids = torch.tensor(ids)
    labels = ids.clone()
    labels[:n_prompt] = IGNORE
    return TrainSample(ids, labels, torch.arange(len(ids)).expand(3, -1), source=src)


def _pairs():
    return [PreferencePair(_sample([1, 2, 3, 4], 2, f"p{i}c"), _sample([1, 2, 5, 6, 7], 2, f"p{i}r"), f"pairs:{i}")
            for i in range(3)]


def test_reference_logps_compute_save_load_check(tmp_path):
    torch.manual_seed(0)
    ref_model = TinyLM()
    fn = pair_logps_fn(lambda s: ref_model(s.input_ids[None]))
    pairs = _pairs()
    ref = ReferenceLogps.compute(pairs, fn, meta={"model": "tiny"})
    assert len(ref) == 3 and 2 in ref
    c, r = ref[0]
    ch = pairs[0].chosen
    assert c == pytest.approx(sequence_logps(ref_model(ch.input_ids[None]), ch.labels[None]).item(), abs=1e-6)
    assert r < 0 and c < 0
    path = tmp_path / "ref.json"
    ref.save(path)
    back = ReferenceLogps.load(path)
    assert back.values == ref.values and back.meta == {"model": "tiny"}  # exact float round trip
    back.check(pairs)
    bc, br = back.batch([2, 0])
    assert bc.dtype == torch.float32 and bc.tolist() == pytest.approx([ref[2][0], ref[0][0]])
    with pytest.raises(ValueError):
        back.check(pairs[:2])
    with pytest.raises(ValueError):
        back.check([PreferencePair(_sample([1], 0, "elsewhere"), p.rejected, "x") for p in pairs])
    with pytest.raises(KeyError):
        back[7]
    with pytest.raises(ValueError):
        ReferenceLogps.compute(pairs, lambda p: (float("nan"), 0.0))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError):
        ReferenceLogps.load(tmp_path / "bad.json")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["bad.json", "ref.json"]  # no temp files left


def test_a_few_dpo_steps_move_the_policy_toward_chosen():
    torch.manual_seed(0)
    policy = TinyLM()
    frozen = TinyLM()
    frozen.load_state_dict(policy.state_dict())
    pairs = _pairs()
    ref = ReferenceLogps.compute(pairs, pair_logps_fn(lambda s: frozen(s.input_ids[None])))
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        pc = torch.cat([sequence_logps(policy(p.chosen.input_ids[None]), p.chosen.labels[None]) for p in pairs])
        pr = torch.cat([sequence_logps(policy(p.rejected.input_ids[None]), p.rejected.labels[None]) for p in pairs])
        rc, rr = ref.batch(range(3))
        loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(LN2, abs=1e-6)  # policy == reference at the start
    assert losses[-1] < 0.2 and m["accuracy"] == 1.0 and m["rewards/margins"] > 0


# --- curation filters -----------------------------------------------------------------------------------------

def test_answers_of_understands_the_record_shapes():
    assert answers_of("hi") == ["hi"]
    assert answers_of({"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                                 {"type": "text", "text": "q"}]},
                                    {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
                                    {"role": "user", "content": "q2"}, {"role": "assistant", "content": "A2"}]}) \
        == ["A1", "A2"]
    assert answers_of({"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                           {"from": "gpt", "value": "A"}]}) == ["A"]
    assert answers_of({"prompt": "q", "chosen": "good", "rejected": "bad"}) == ["good", "bad"]
    assert answers_of({"answer": "x"}) == ["x"]
    assert answers_of({"messages": [{"role": "user", "content": "q"}]}) == []


def test_empty_filter():
    assert empty_filter("A cat.") == (True, "ok")
    for bad in ("", "   \n", "<|im_end|>", {"messages": [{"role": "user", "content": "q"}]},
                {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]}):
        ok, why = empty_filter(bad)
        assert not ok and why.startswith("empty"), bad
    assert not empty_filter("ok", min_chars=3)[0]


def test_placeholder_filter():
    assert placeholder_filter("The image shows a red car.")[0]
    assert placeholder_filter({"conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                 {"from": "gpt", "value": "A car."}]})[0]  # in the question: fine
    assert placeholder_filter('<img src="a.png"> is html, not a placeholder')[0]
    for bad in ("Here: <image> a car", "<video> shows", "a <|image_pad|><|image_pad|> b", "<|vision_start|>x"):
        ok, why = placeholder_filter(bad)
        assert not ok and why.startswith("vision_placeholder"), bad


TABLE = "| " + " | ".join(f"c{i}" for i in range(24)) + " |\n|" + "---|" * 24 + "\n| " + \
    " | ".join(str(i) for i in range(24)) + " |"
HTML_EMPTY = "<table><tr>" + "<td></td>" * 30 + "</tr><tr><td>1</td><td>2</td></tr></table>"
GROUNDING_OK = json.dumps([{"bbox_2d": [10 + 20 * i, 10, 25 + 20 * i, 40], "label": "car"} for i in range(25)])


def test_repetition_filter():
    for good in ("very very very good", "The cat sat on the mat. The dog sat on the log.", TABLE, HTML_EMPTY,
                 GROUNDING_OK, "Chapter 1 " + "." * 80 + " 5", "=" * 100, "ha " * 6,
                 "\n".join(f"Step {i}: add {i} to the total." for i in range(30))):
        assert repetition_filter(good) == (True, "ok"), good
    loops = {
        "words": "The answer is that the cat " + "the cat " * 40,
        "bangs": "!" * 200,  # the fp16 overflow symptom
        "cjk": "这是一个" + "我爱你" * 20,
        "json": json.dumps([{"bbox_2d": [10, 10, 50, 50], "label": "car"}] * 12),
        "lines": "Title\n" + "\n".join(["This is a rather long sentence that the model keeps writing again, with "
                                        "more than sixty-four tokens in it so the token rule does not see it as a "
                                        "loop because the period is too long for it to look at by default."] * 7),
    }
    for name, bad in loops.items():
        ok, why = repetition_filter(bad)
        assert not ok and why.startswith("repetition"), name
    assert "line" in repetition_filter(loops["lines"])[1]
    assert repetition_filter("ha " * 6, min_repeats=5, min_span=5)[0] is False  # thresholds are knobs


def test_truncation_filter():
    for good in ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a (b"}]\n```', "Values lie in [0, 1).",
                 "Options: a) one b) two.", 'He said "hello" and left.', "<html><body><p>x</p></body></html>",
                 "{'label': 'it\\'s'}", '{"text": "a ] inside a string"}'):
        assert truncation_filter(good) == (True, "ok"), good
    bad = {
        "fence": "```json\n[1, 2, 3]\n",
        "json": '[{"bbox_2d": [12, 30, 80, 96], "label": "cat"}, {"bbox_2d": [1',
        "string": '{"text": "The quick brown fox',
        "paren": "The result (see the table below",
        "quotes": 'He said "hello and left.',
        "html": "<html><body><table><tr><td>1</td></tr>",
    }
    for name, text in bad.items():
        ok, why = truncation_filter(text)
        assert not ok and why.startswith("truncated"), name
    # mid-sentence only counts when generation hit the token limit
    cut = "The picture shows a small dog sitting next to a"
    assert truncation_filter(cut)[0]
    assert not truncation_filter(cut, finish_reason="length")[0]
    assert not truncation_filter({"answer": cut, "finish_reason": "length"})[0]
    assert truncation_filter({"answer": cut + " tree.", "finish_reason": "length"})[0]
    assert truncation_filter({"answer": cut, "finish_reason": "stop"})[0]
    assert truncation_filter("The result (see below", check_brackets=False)[0]


def test_grounding_filter():
    ok = '```json\n[{"bbox_2d": [10, 20, 100, 200], "label": "dog"}]\n```'
    assert grounding_filter(ok, image_size=(480, 640)) == (True, "ok")
    assert grounding_filter("A dog on the grass.") == (True, "ok")  # not a grounding answer
    assert grounding_filter({"answer": ok, "image_size": [480, 640]})[0]
    # inside the 2 px tolerance: x2 = 641 on a 640-wide image
    assert grounding_filter('[{"bbox_2d": [0, 0, 641, 480], "label": "all"}]', image_size=(480, 640))[0]
    cases = [
        ('{"bbox_2d": "somewhere", "label": "dog"}', {}, "malformed_grounding"),  # JSON without a usable box
        ("I think there is a dog.", {"task": "grounding"}, "malformed_grounding"),
        ('[{"bbox_2d": [10, 20, 10, 200], "label": "dog"}]', {}, "malformed_grounding"),  # zero width
        ('[{"bbox_2d": [10, 20, 700, 200], "label": "dog"}]', {"image_size": (480, 640)}, "box_outside_image"),
        ('[{"bbox_2d": [10, 20, 100, 490], "label": "dog"}]', {"image_size": (480, 640)}, "box_outside_image"),
        ('[{"bbox_2d": [-9, 20, 100, 200], "label": "dog"}]', {}, "box_outside_image"),
        ('[{"point_2d": [650, 20], "label": "dog"}]', {"image_size": (480, 640)}, "box_outside_image"),
    ]
    for text, kw, code in cases:
        res = grounding_filter(text, **kw)
        assert not res[0] and res[1].startswith(code), (text, res)
    rec = {"messages": [{"role": "user", "content": "Locate the dog"},
                        {"role": "assistant", "content": '[{"bbox_2d": [10, 20, 700, 200], "label": "dog"}]'}],
           "height": 480, "width": 640}
    assert grounding_filter(rec)[1].startswith("box_outside_image")


def test_filter_records_counts_and_reasons():
    records = [
        {"answer": "A red car."},
        {"answer": ""},
        {"answer": "!" * 100},
        {"answer": '[{"bbox_2d": [1, 2, 3'},
        {"answer": '[{"bbox_2d": [10, 20, 700, 200], "label": "dog"}]', "image_size": [480, 640]},
        {"answer": "see <image>"},
        "fine as a bare string.",
    ]
    kept, rejected, counts = filter_records(records)
    assert kept == [records[0], records[6]]
    assert [r for r, _ in rejected] == records[1:6]
    assert counts == {"empty": 1, "repetition": 1, "truncated": 1, "box_outside_image": 1, "vision_placeholder": 1}
    res = filter_records(records, ["empty"], all_reasons=True)
    assert len(res.kept) == 6 and res.summary().startswith("kept 6/7")
    both = filter_records([{"answer": '[{"bbox_2d": [1, 2, 3'}], DEFAULT_FILTERS, all_reasons=True)
    assert [w.split(":")[0] for w in both.rejected[0][1]] == ["truncated", "malformed_grounding"]
    assert both.counts == {"truncated": 1, "malformed_grounding": 1}
    strict = functools.partial(grounding_filter, tolerance=0.0)
    assert filter_records(['[{"bbox_2d": [0, 0, 641, 480]}]'], [strict]).counts == {}  # no size: only >= 0 checked
    with pytest.raises(ValueError):
        filter_records(records, ["nope"])


# --- rejection sampling ---------------------------------------------------------------------------------------

def test_rejection_sampling_with_a_stub_generator():
    items = [{"id": 0, "gt": [10, 10, 50, 50]}, {"id": 1, "gt": [0, 0, 100, 100]}, {"id": 2, "gt": [5, 5, 9, 9]}]
    answers = {
        0: ['[{"bbox_2d": [12, 10, 50, 50], "label": "a"}]',  # IoU 38*40 / 40*40 = 0.95
            "no idea", '[{"bbox_2d": [10, 10, 50, 50], "label": "a"}]', "[[10, 10, 30, 50]]"],  # IoU 1.0, 0.5
        1: ['[{"bbox_2d": [0, 0, 50, 100]}]', '[{"bbox_2d": [0, 0, 100, 40]}]'],  # IoU 0.5, 0.4
        2: ["garbage", '[{"bbox_2d": [100, 100, 200, 200]}]'],  # 0, 0
    }
    calls = []

    def generate(item, n):
        calls.append((item["id"], n))
        return answers[item["id"]][:n]

    out = rejection_sample(generate, items, grounding_iou_scorer, n=4, threshold=0.5)
    assert calls == [(0, 4), (1, 4), (2, 4)]
    assert [r["index"] for r in out] == [0, 1]
    assert out[0]["answer"] == answers[0][2] and out[0]["score"] == pytest.approx(1.0)
    assert out[0]["scores"] == pytest.approx([0.95, 0.0, 1.0, 0.5])
    assert out[1]["score"] == pytest.approx(0.5) and out[1]["item"] is items[1]
    s = out.summary
    assert (s["total"], s["kept"], s["rejected"], s["candidates"], s["errors"]) == (3, 2, 1, 8, 0)
    assert s["keep_rate"] == pytest.approx(2 / 3) and s["mean_best_score"] == pytest.approx(0.5)
    # a stricter threshold keeps only the perfect one; filters drop candidates before scoring
    assert [r["index"] for r in rejection_sample(generate, items, grounding_iou_scorer, threshold=0.99)] == [0]
    filtered = rejection_sample(generate, items[:1], grounding_iou_scorer, n=1, filters=DEFAULT_FILTERS)
    assert filtered.summary["filtered"] == 0 and filtered[0]["score"] == pytest.approx(0.95)

    def flaky(item, n):
        if item["id"] == 1:
            raise RuntimeError("model crashed")
        return generate(item, n)
    with pytest.raises(RuntimeError):
        rejection_sample(flaky, items, grounding_iou_scorer)
    skipped = rejection_sample(flaky, items, grounding_iou_scorer, on_error="skip",
                               make_record=lambda item, a, sc: {**item, "answer": a})
    assert skipped == [{"id": 0, "gt": [10, 10, 50, 50], "answer": answers[0][2]}]
    assert skipped.summary["errors"] == 1


def test_scorers():
    item = {"gt": [{"bbox_2d": [0, 0, 10, 10], "label": "a"}, {"bbox_2d": [20, 0, 30, 10], "label": "b"}]}
    two = '[{"bbox_2d": [20, 0, 30, 10], "label": "b"}, {"bbox_2d": [0, 0, 10, 10], "label": "a"}]'
    assert grounding_iou_scorer(item, two) == pytest.approx(1.0)  # order does not matter
    assert grounding_iou_scorer(item, '[{"bbox_2d": [0, 0, 10, 10]}]') == pytest.approx(0.5)  # one box missing
    swapped = '[{"bbox_2d": [20, 0, 30, 10], "label": "a"}, {"bbox_2d": [0, 0, 10, 10], "label": "b"}]'
    assert grounding_iou_scorer(item, swapped, match_labels=True) == 0.0
    assert grounding_iou_scorer({"gt": '{"bbox_2d": [0, 0, 10, 10]}'}, "[0, 0, 10, 5]") == pytest.approx(0.5)
    assert grounding_iou_scorer({"box": [0, 0, 10, 10]}, "nothing here", key="box") == 0.0
    assert grounding_iou_scorer({"gt": []}, "[]") == 1.0

    assert exact_match_scorer({"gt": "Paris"}, "  paris. ") == 1.0
    assert exact_match_scorer({"gt": "Paris"}, "The answer is **Paris**") == 1.0
    assert exact_match_scorer({"gt": ["3", "three"]}, "3.0") == 1.0
    assert exact_match_scorer({"gt": "Paris"}, "London") == 0.0
    assert exact_match_scorer({"gt": "Paris"}, "paris", normalize=False) == 0.0
    assert exact_match_scorer({"q": 1}, "x", key=lambda it: "x") == 1.0

    assert count_scorer({"gt": 5}, "There are five apples in the image.") == 1.0
    assert count_scorer({"gt": 5}, "I count 4 apples.") == 0.0
    assert count_scorer({"gt": 2}, '[{"bbox_2d": [0, 0, 1, 1]}, {"bbox_2d": [2, 2, 3, 3]}]') == 1.0
    assert count_scorer({"gt": 2}, "no idea") == 0.0
    with pytest.raises(KeyError):
        count_scorer({}, "1")
