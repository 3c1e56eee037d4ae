"""Sampler and SamplingParams: HF-defined steps against transformers 4.51.3's logits processors."""
import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from qwenvl.sampling import Sampler, SamplingParams, apply_filters, apply_penalties

V = 64


def _logits(B=4, seed=0, scale=3.0):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale


# repetition / presence / frequency penalties ------------------------------------------------------------------
def test_repetition_penalty_by_hand():
    row = torch.tensor([2.0, -1.0, 0.5, -3.0, 4.0])
    out = apply_penalties(row.clone(), [0, 1, 1, 3, 0], 0, SamplingParams(repetition_penalty=2.0))
    assert torch.equal(out, torch.tensor([1.0, -2.0, 0.5, -6.0, 4.0]))  # applied once per id, however repeated


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.5])
def test_repetition_penalty_matches_transformers(penalty):
    logits = _logits(B=3, seed=1)
    history = [[1, 5, 5, 9, 60, 1], [0, 2, 3], [63, 63, 10, 11, 12, 13, 14, 10]]
    n_gen = [2, 0, 5]
    hf = torch.stack([RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([h]), logits[i:i + 1].clone())[0]
                      for i, h in enumerate(history)])
    s = Sampler([SamplingParams(repetition_penalty=penalty)] * 3, V)
    ours = s.process(logits, history, n_gen)
    assert torch.equal(ours, hf)
    assert not torch.equal(ours, logits)  # the penalty did something


def test_presence_and_frequency_penalties_by_hand():
    row = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    history = [4, 4, 4, 0, 2, 2, 1]  # prompt [4, 4, 4]; generated [0, 2, 2, 1]
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(row.clone(), history, 4, p)
    # id 0: 1 - 0.5 - 0.25; id 1: same; id 2: 1 - 0.5 - 0.5; id 3: unseen; id 4: prompt only, not counted
    assert torch.allclose(out, torch.tensor([0.25, 0.25, 0.0, 1.0, 1.0]))
    neg = apply_penalties(row.clone(), history, 4, SamplingParams(presence_penalty=-1.0))
    assert torch.allclose(neg, torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0]))


def test_penalties_leave_the_input_logits_alone():
    logits = _logits(B=1)
    before = logits.clone()
    Sampler([SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0)], V)(logits, [[1, 2, 3]], [3])
    assert torch.equal(logits, before)


# filters ---------------------------------------------------------------------------------------------------
def _hf_filter(row, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    x = row[None].clone()
    ids = torch.zeros(1, 1, dtype=torch.long)
    x = TemperatureLogitsWarper(float(temperature))(ids, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(ids, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(ids, x)
    if min_p:
        x = MinPLogitsWarper(min_p)(ids, x)
    return x[0]


@pytest.mark.parametrize("kw", [
    dict(temperature=1.0), dict(temperature=0.5), dict(temperature=1.7, top_k=5), dict(temperature=1.0, top_k=40),
    dict(temperature=1.0, top_p=0.9), dict(temperature=0.7, top_p=0.3), dict(temperature=2.0, top_p=0.001),
    dict(temperature=1.0, min_p=0.1), dict(temperature=0.8, min_p=0.5), dict(temperature=1.0, min_p=1.0),
    dict(temperature=0.9, top_k=20, top_p=0.8, min_p=0.05),
])
def test_filters_match_transformers(kw):
    p = SamplingParams(**kw)
    for seed in range(5):
        row = _logits(B=1, seed=seed)[0]
        ours, hf = apply_filters(row.clone(), p), _hf_filter(row, **kw)
        assert torch.equal(torch.isinf(ours), torch.isinf(hf)), kw
        assert torch.allclose(ours[~torch.isinf(ours)], hf[~torch.isinf(hf)])
        assert (~torch.isinf(ours)).sum() >= 1
    if kw.get("top_p", 1.0) < 1 or kw.get("top_k") or kw.get("min_p"):
        assert torch.isinf(ours).any()  # the filter removed something


def test_top_k_keeps_ties_like_transformers():
    row = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    p = SamplingParams(temperature=1.0, top_k=2)
    assert torch.equal(torch.isinf(apply_filters(row, p)), torch.isinf(_hf_filter(row, top_k=2)))
    assert (~torch.isinf(apply_filters(row, p))).sum() == 3


# choosing ids ----------------------------------------------------------------------------------------------
def _run(params, steps=50, seed=0):
    s = Sampler(params, V)
    out = []
    for t in range(steps):
        out.append(s(_logits(B=len(params), seed=seed + t, scale=1.0), [[] for _ in params], [t] * len(params)))
    return torch.stack(out, 1)  # (B, steps)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    a = _run([SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=1.0, seed=8)])
    b = _run([SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=1.0, seed=8)])
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    # a row's draws depend on its own seed only, not on its neighbours
    c = _run([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=8)])
    assert torch.equal(c[1], a[1])


def test_greedy_and_top_k_1_are_argmax():
    logits = _logits(B=4, seed=3)
    expect = logits.argmax(-1)
    hist, n = [[]] * 4, [0] * 4
    assert torch.equal(Sampler([SamplingParams()] * 4, V)(logits, hist, n), expect)
    top1 = [SamplingParams(temperature=t, top_k=1, seed=i) for i, t in enumerate((0.5, 1.0, 1.5, 3.0))]
    assert torch.equal(Sampler(top1, V)(logits, hist, n), expect)
    out = Sampler([SamplingParams(temperature=1.0)] * 4, V)(logits, hist, n)
    assert out.dtype == torch.int64 and out.shape == (4,)


def test_greedy_ties_take_lowest_id_and_padding_ids_are_never_chosen():
    logits = torch.zeros(1, V)
    logits[0, [9, 4]] = 5.0
    logits[0, 60:] = 100.0  # padding rows beyond the tokenizer's vocabulary
    assert Sampler([SamplingParams()], 60)(logits, [[]], [0]).item() == 4
    s = Sampler([SamplingParams(temperature=1.0, top_k=2, seed=0)], 60)
    draws = {s(logits, [[]], [0]).item() for _ in range(40)}
    assert draws == {4, 9}


def test_min_new_tokens_blocks_stop_ids_until_reached():
    logits = torch.zeros(2, V)
    logits[:, 5] = 10.0   # eos, the favourite
    logits[:, 6] = 9.0    # a stop_token_id of the params
    logits[:, 7] = 8.0
    p = SamplingParams(min_new_tokens=3, stop_token_ids=(6,))
    s = Sampler([p, SamplingParams(temperature=1.0, top_k=1, min_new_tokens=3, stop_token_ids=(6,))], V)
    for n in range(3):
        assert s(logits, [[], []], [n, n], stop_ids=[{5}, {5}]).tolist() == [7, 7]
    assert s(logits, [[], []], [3, 3], stop_ids=[{5}, {5}]).tolist() == [5, 5]
    assert Sampler([SamplingParams()], V)(logits[:1], [[]], [0], stop_ids=[{5}]).item() == 5


def test_sampler_checks_shapes():
    s = Sampler([SamplingParams()] * 2, V)
    with pytest.raises(ValueError, match="rows"):
        s(_logits(B=3), [[]] * 3, [0] * 3)
    with pytest.raises(ValueError, match="vocab_size"):
        Sampler([SamplingParams()], V + 1)(_logits(B=1), [[]], [0])
    logits = _logits(B=1)
    assert Sampler([SamplingParams()], 0)(logits, [[]], [0]).item() == logits.argmax().item()  # 0 = no limit


# SamplingParams ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", 0), ("min_new_tokens", -1), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5),
    ("top_k", -1), ("min_p", 1.2), ("repetition_penalty", 0.0), ("presence_penalty", 2.5),
    ("frequency_penalty", -3.0), ("stop", ("",)), ("max_new_tokens", 2.5),
])
def test_validate_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()
    with pytest.raises(ValueError, match=field):
        SamplingParams.from_options(**{field: value})


def test_validate_accepts_the_range_ends():
    SamplingParams(max_new_tokens=1, temperature=0.0, top_p=1.0, min_p=1.0, presence_penalty=-2.0,
                   frequency_penalty=2.0, repetition_penalty=0.01).validate()


def test_from_options():
    with pytest.raises(TypeError, match="temprature"):
        SamplingParams.from_options(temprature=0.5)
    p = SamplingParams.from_options(stop="###", stop_token_ids=[3, 4], top_p=None, temperature=1)
    assert p.stop == ("###",) and p.stop_token_ids == (3, 4) and p.top_p == 1.0 and p.temperature == 1.0
    assert SamplingParams.from_options(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams.from_options() == SamplingParams()


def test_from_options_merges_generation_config_defaults():
    qwen = {"bos_token_id": 1, "pad_token_id": 1, "do_sample": True, "eos_token_id": [2, 1],
            "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "transformers_version": "x"}
    p = SamplingParams.from_options(qwen)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.1, 0.001, 1, 1.05)
    q = SamplingParams.from_options(qwen, temperature=0.7, top_k=None, max_new_tokens=9)
    assert (q.temperature, q.top_k, q.max_new_tokens) == (0.7, 1, 9)  # explicit wins; None keeps the default
    greedy = SamplingParams.from_options({"do_sample": False, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 5})
    assert greedy.temperature == 0.0 and greedy.top_p == 0.9 and greedy.max_new_tokens == 5
    assert SamplingParams.from_options({"temperature": 0.6}).temperature == 0.0  # no do_sample: greedy, as in HF
    assert SamplingParams.from_options({"do_sample": True}).temperature == 1.0
    assert SamplingParams.from_options({"do_sample": False}, temperature=0.8).temperature == 0.8
