"""qwenvl.train.diagnose: does a model use its pictures? Checked on a tiny random model (varied visual tokens, the
loss moves when the pictures are blanked) and on the same model with its merger collapsed to one shared vector
(the failure the embedded model's early runs fell into)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qwenvl
from qwenvl.tiny import make_random_checkpoint
from qwenvl.train.data import SFTData
from qwenvl.train.packing import collate, packed_loss
from qwenvl.train.diagnose import COLLAPSED_SPREAD, ROLES, diagnose, token_roles

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "configs" / "data" / "tiny-heldout.jsonl"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("diag") / "m", seed=3)


def _samples(vlm, n=6):
    data = SFTData([HELDOUT], vlm.processor)
    out = [data[i] for i in range(len(data))]
    return [s for s in out if s.pixel_values is not None][:n]


def test_random_model_varies_its_visual_tokens_and_reacts_to_blank_pictures(ckpt):
    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    samples = _samples(vlm)
    r = diagnose(vlm, samples)
    assert r["samples"] == 6
    assert r["visual_tokens"]["spread"] > COLLAPSED_SPREAD
    assert r["media_reliance"]["gap"] != 0.0  # blanking the pictures changes the answer-token loss
    assert set(r["grad_norm"]) == {"language_model", "merger", "vision"}
    roles = r["answer_tokens"]
    assert set(roles) <= set(ROLES) and "other" in roles
    n_tokens = sum(v["n"] for v in roles.values())
    assert n_tokens == r["media_reliance"]["loss_tokens"]  # every answer token has exactly one role
    mean = sum(v["n"] * v["loss"] for v in roles.values()) / n_tokens
    with torch.no_grad():  # the per-sample losses, split by role, add up to the packed batch's loss
        packed = float(packed_loss(vlm.model, collate(samples))[0]) / n_tokens
    assert mean == pytest.approx(packed, rel=1e-4)
    assert r["media_reliance"]["loss"] == pytest.approx(mean, rel=1e-9)
    assert all(v > 0 for v in r["grad_norm"].values())
    after = vlm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # measuring does not train
    assert all(p.grad is None for p in vlm.model.parameters())


def test_token_roles_split_digits_labels_and_format():
    pieces = ['```', 'json', '\n', '[{"', 'bbox', '_', '2', 'd', '":', ' [', '2', '6', ',', ' ', '1', '0', '5', '],',
              ' "', 'label', '":', ' "', 'purple', ' triangle', '"}', ']\n', '```']
    roles = token_roles(pieces)
    assert len(roles) == len(pieces)
    got = {r: [p for p, x in zip(pieces, roles) if x == r] for r in ROLES}
    assert got["digit_first"] == ["2", "2", "1"]  # "2" of bbox_2d, then 26 and 105
    assert got["digit_rest"] == ["6", "0", "5"]
    assert got["label"] == ["purple", " triangle"]
    assert token_roles([" 7", " 8"]) == ["digit_first", "digit_first"]  # a space starts a new number
    assert token_roles(['"label": "', 'red']) == ["other", "label"]  # an unfinished label still counts


def test_collapsed_merger_is_reported(ckpt):
    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    last = vlm.model.visual.merger.mlp[2]
    with torch.no_grad():  # every visual token becomes the same large vector: the "attention sink" failure
        last.weight.zero_()
        last.bias.copy_(torch.linspace(-3, 3, last.bias.numel()))
    r = diagnose(vlm, _samples(vlm))
    assert r["visual_tokens"]["spread"] < 1e-6
    assert abs(r["media_reliance"]["gap"]) < 1e-6
    assert not r["ok"]
    assert "do not depend on the pictures" in r["verdict"] and "collapsed" in r["verdict"]


def test_cli_prints_json_and_exit_codes(ckpt, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "qwenvl.train.diagnose", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=300, cwd=ROOT)
    r = run("-m", str(ckpt), "--data", str(HELDOUT), "--n", "4")
    assert r.returncode in (0, 1), r.stderr[-1500:]
    rep = json.loads(r.stdout)
    assert rep["samples"] == 4 and "verdict" in rep
    assert r.stderr.strip().splitlines()[-1].startswith("verdict: ")
    text_only = tmp_path / "text.jsonl"
    text_only.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "hello"}]}) + "\n")
    r = run("-m", str(ckpt), "--data", str(text_only))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: none of the samples has an image or a video; diagnose needs held-out records with media"]


def test_mrope_reach_matches_the_rotary_tables():
    """The reach is the angle between two positions `span` apart in the fastest frequency of each component,
    read back from the MRoPE cos/sin tables the model uses."""
    from qwenvl.model.layers import mrope_cos_sin, mrope_reach

    for theta, sec in ((1e6, (16, 8, 8)), (50.0, (4, 14, 14))):
        r = mrope_reach(64, theta, sec, 15)
        ids = torch.zeros(3, 1, 2, dtype=torch.long)
        for k in range(3):  # position 0 and 15 in component k only
            ids_k = ids.clone()
            ids_k[k, 0, 1] = 15
            cos, sin = mrope_cos_sin(ids_k, 64, theta, sec, torch.float64)
            first = sum(sec[:k])  # the component's fastest frequency is its first one
            angle = torch.atan2(sin[0, 1, first], cos[0, 1, first]).item()
            assert abs(angle % (2 * torch.pi) - r["thw"[k]] % (2 * torch.pi)) < 1e-4
    blind = mrope_reach(64, 1e6, (16, 8, 8), 15)  # the old embedded config: columns are indistinguishable
    assert blind["w"] < 1e-3 and blind["h"] < 0.02
    seeing = mrope_reach(64, 50.0, (4, 14, 14), 15)
    assert seeing["h"] > 1.0 and seeing["w"] > 1.0


def test_diagnose_notes_a_position_blind_rope(ckpt):
    from dataclasses import replace

    from qwenvl.train.diagnose import position_reach

    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    samples = _samples(vlm)
    seeing = replace(vlm.config, text=replace(vlm.config.text, rope_theta=10.0))
    r = position_reach(seeing, samples)
    assert r["rows"] > 1 and r["cols"] > 1  # the held-out pictures are several merged tokens wide and tall
    assert r["h"] > 1.0 and "rows" not in r["note"] and "columns" not in r["note"]
    # theta 10 has no slow frequency: content lookups at a varying distance are slower to learn
    assert r["slowest"] == pytest.approx(10.0 ** (-(vlm.config.text.head_dim - 2) / vlm.config.text.head_dim))
    assert "slowest frequency" in r["note"]
    both = replace(vlm.config, text=replace(vlm.config.text, rope_theta=1e4, mrope_section=(1, 1, sum(
        vlm.config.text.mrope_section) - 2)))
    r = position_reach(both, samples)
    assert r["slowest"] < 0.05 and r["note"] is None, r  # fast rows and columns, and slow frequencies for text
    blind = position_reach(replace(vlm.config, text=replace(vlm.config.text, rope_theta=1e12)), samples)
    assert blind["w"] < 1e-3 and "columns" in blind["note"] and "rows" in blind["note"]
    assert "position_reach" in diagnose(vlm, samples)


def test_mrope_alias_reads_the_rotary_tables_and_flags_the_embedded_temporal_axis():
    """K(d) is the mean cosine of the component's rotations at offset d, read back from the model's MRoPE tables;
    the embedded shape (theta 5, [4, 14, 14]) aliases in time over a 60 s clip (120 positions), the official one
    (theta 1e6, [16, 24, 24], head_dim 128) does not, and neither aliases across a 12-token picture."""
    from qwenvl.model.layers import mrope_alias, mrope_cos_sin

    sec = (4, 14, 14)
    a = mrope_alias(64, 5.0, sec, 120)
    for k, name in enumerate("thw"):
        d = a[name]["offset"]
        ids = torch.zeros(3, 1, 2, dtype=torch.long)
        ids[k, 0, 1] = d
        cos, _ = mrope_cos_sin(ids, 64, 5.0, sec, torch.float64)
        first = sum(sec[:k])
        assert cos[0, 1, first:first + sec[k]].mean().item() == pytest.approx(a[name]["similarity"], abs=1e-5)
    t = a["t"]
    assert t["aliased"] and t["similarity"] > 0.85 > 0.65 > t["neighbour"] and 5 <= t["offset"] <= 8
    assert not mrope_alias(64, 5.0, sec, 12)["h"]["aliased"] and not mrope_alias(64, 5.0, sec, 12)["w"]["aliased"]
    assert not mrope_alias(128, 1e6, (16, 24, 24), 120)["t"]["aliased"]
    assert mrope_alias(64, 5.0, sec, 1)["t"] is None and mrope_alias(64, 5.0, (0, 16, 16), 50)["t"] is None


def _video_sample(vlm, tmp_path, n_frames, fps):
    from PIL import Image

    frames = []
    for i in range(n_frames):
        p = tmp_path / f"f{i:03d}.png"
        Image.new("RGB", (56, 56), (10 * i % 250, 80, 160)).save(p)
        frames.append(str(p))
    rec = {"messages": [
        {"role": "user", "content": [{"type": "video", "video": frames, "fps": fps},
                                     {"type": "text", "text": "When does it turn red?"}]},
        {"role": "assistant", "content": "The given query happens in 1.0 - 2.0 seconds."}]}
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    return SFTData([f], vlm.processor)[0]


def test_diagnose_notes_a_temporal_axis_that_aliases(ckpt, tmp_path):
    from dataclasses import replace

    from qwenvl.train.diagnose import position_reach, temporal_span

    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    s = _video_sample(vlm, tmp_path, 24, 1.0)  # 12 temporal patches of 2 s each, 2 positions per second
    grid_t = int(s.video_grid_thw[0, 0])
    assert grid_t == 12
    tps = vlm.config.vision.tokens_per_second
    assert temporal_span(vlm.config, [s]) == int((grid_t - 1) * 2.0 * tps) == 44
    assert temporal_span(vlm.config, _samples(vlm)) == 0  # pictures only
    # the tiny model's head_dim is 32: theta sqrt(5) with a 4-frequency t section gives the embedded model's
    # temporal frequencies (5 ** (-j / 32), j = 0..3)
    assert vlm.config.text.head_dim == 32
    embedded = replace(vlm.config, text=replace(vlm.config.text, rope_theta=5.0 ** 0.5, mrope_section=(4, 6, 6)))
    r = position_reach(embedded, [s])
    assert r["t_span"] == 44 and r["t_alias"]["aliased"] and "temporal component aliases" in r["note"]
    spread = replace(vlm.config, text=replace(vlm.config.text, rope_theta=1e4, mrope_section=(4, 6, 6)))
    r = position_reach(spread, [s])
    assert not r["t_alias"]["aliased"] and "temporal" not in (r["note"] or "")
