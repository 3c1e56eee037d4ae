"""The trainer on a tiny random model: learning, packing invariance, stages, exact resume, FSDP2, export."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl.train.config import TrainConfig
from qwenvl.train.packing import collate, packed_loss, plan_bins


def _write_data(d: Path, n: int = 12, seed: int = 0) -> Path:
    """Tiny conversations about coloured squares: image + question -> a short, learnable answer."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    lines = []
    for i in range(n):
        name = list(colours)[i % 3]
        arr = np.full((56 + 28 * (i % 2), 84, 3), 255, np.uint8)
        arr[10:40, 10:50] = colours[name]
        arr = np.clip(arr.astype(int) + rng.integers(-5, 5, arr.shape), 0, 255).astype(np.uint8)
        p = d / f"img{i}.png"
        Image.fromarray(arr).save(p)
        if i % 4 == 3:  # some text-only records, in the qwen-vl-finetune format
            lines.append({"conversations": [{"from": "human", "value": "Say the colour word."},
                                            {"from": "gpt", "value": name}]})
        else:
            lines.append({"messages": [
                {"role": "user", "content": [{"type": "image", "image": p.name},
                                             {"type": "text", "text": "What colour is the square?"}]},
                {"role": "assistant", "content": f"The square is {name}."}]})
    f = d / "train.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return f


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from qwenvl.tiny import make_random_checkpoint

    d = tmp_path_factory.mktemp("train")
    ckpt = make_random_checkpoint(d / "ckpt", seed=0)
    data = _write_data(d)
    return ckpt, data, d


def _cfg(setup, out, **kw):
    ckpt, data, _ = setup
    base = dict(model=str(ckpt), data=[str(data)], out_dir=str(out), stage="all", lr=3e-3, warmup_steps=2,
                pack_length=512, grad_accum=1, max_steps=0, epochs=1, seed=0, autocast="off", export=False)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_loss_decreases(setup, tmp_path):
    from qwenvl.train.trainer import Trainer

    t = Trainer(_cfg(setup, tmp_path / "run", epochs=12, pack_length=256))
    hist = t.fit(resume=False)
    first = np.mean([h["loss"] for h in hist[:3]])
    last = np.mean([h["loss"] for h in hist[-3:]])
    assert last < 0.5 * first, (first, last)
    assert all(h["samples"] > 0 and h["tokens"] > 0 for h in hist)


def test_packed_equals_unpacked_per_sample(setup):
    from qwenvl.train.data import SFTData

    ckpt, data, _ = setup
    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    ds = SFTData([str(data)], vlm.processor)
    samples = [ds[i] for i in (0, 3, 1, 2)]  # image, text, image of another size, image
    with torch.no_grad():
        _, per_sum, per_cnt = packed_loss(vlm.model, collate(samples))
        for k, s in enumerate(samples):
            _, alone, cnt = packed_loss(vlm.model, collate([s]))
            assert int(cnt[0]) == int(per_cnt[k]) == s.num_loss_tokens
            # tolerance: fp32 summation order differs between one long and several short sequences
            assert abs(float(alone[0]) - float(per_sum[k])) <= 1e-4 * max(1.0, abs(float(alone[0])))


def test_plan_bins_respects_capacity_and_is_deterministic():
    counts = [300, 120, 80, 500, 40, 260, 90]
    bins = plan_bins(counts, 512)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum(counts[i] for i in b) <= 512 for b in bins)
    assert plan_bins(counts, 512) == bins
    with pytest.raises(ValueError, match="packing length"):
        plan_bins([600], 512)


def test_plan_bins_is_plain_first_fit():
    """Skipping full bins is only a speed-up: placements equal a naive first fit over every bin."""
    import random

    def naive(counts, cap, order):
        bins, room = [], []
        for i in order:
            b = next((b for b, r in enumerate(room) if counts[i] <= r), None)
            if b is None:
                bins.append([i])
                room.append(cap - counts[i])
            else:
                bins[b].append(i)
                room[b] -= counts[i]
        return bins

    rng = random.Random(0)
    for _ in range(20):
        counts = [rng.randint(1, 700) for _ in range(rng.randint(1, 800))]
        order = rng.sample(range(len(counts)), len(counts))
        assert plan_bins(counts, 1024, order, decreasing=False) == naive(counts, 1024, order)
        ranked = sorted(order, key=lambda i: -counts[i])
        assert plan_bins(counts, 1024, order) == naive(counts, 1024, ranked)


def test_training_bins_mix_sample_lengths():
    """Training bins are random mixes: with two kinds of samples (short and long, e.g. two tasks), most bins hold
    both. Packing by length instead makes each bin one kind, so every step would train one task."""
    from qwenvl.train.trainer import BinStream

    counts = [60 if i % 2 else 110 for i in range(400)]  # two "tasks" of different lengths
    kind = lambda i: counts[i]  # noqa: E731

    def mixed_share(stream):
        bins = stream.plan(0)
        assert sorted(i for b in bins for i in b) == list(range(400))
        assert all(sum(counts[i] for i in b) <= 1024 for b in bins)
        return sum(len({kind(i) for i in b}) == 2 for b in bins) / len(bins)

    assert mixed_share(BinStream(counts, 1024, seed=0, epochs=1)) > 0.9
    assert mixed_share(BinStream(counts, 1024, seed=0, epochs=1, by_length=True)) < 0.2
    assert BinStream(counts, 1024, seed=0, epochs=1).plan(0) == BinStream(counts, 1024, seed=0, epochs=1).plan(0)


def test_sft_stage_freezes_the_vision_tower(setup, tmp_path):
    from qwenvl.train.trainer import Trainer

    t = Trainer(_cfg(setup, tmp_path / "run", stage="sft", max_steps=2))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit(resume=False)
    after = t.model.state_dict()
    vis = [k for k in before if k.startswith("visual.") and not k.startswith("visual.merger.")]
    assert vis and all(torch.equal(before[k], after[k]) for k in vis)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual.merger."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.layers."))


def _run_cli(cfg_path, extra=(), timeout=600):
    return subprocess.Popen([sys.executable, "-m", "qwenvl", "train", "--config", str(cfg_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(out: Path) -> dict[int, float]:
    res = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        res[m["step"]] = m["loss"]  # a re-run step overwrites: the resumed value counts
    return res


def _yaml(setup, path: Path, out: Path, **kw) -> Path:
    import yaml

    cfg = _cfg(setup, out, **kw).to_dict()
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_and_resume_reproduces_losses_exactly(setup, tmp_path, sig):
    steps = 8
    ref_out = tmp_path / "ref"
    p = _run_cli(_yaml(setup, tmp_path / "ref.yaml", ref_out, max_steps=steps, save_every=1))
    assert p.wait(600) == 0, p.stderr.read()
    ref = _losses(ref_out)
    assert sorted(ref) == list(range(1, steps + 1))

    out = tmp_path / "killed"
    cfg = _yaml(setup, tmp_path / "k.yaml", out, max_steps=steps, save_every=1)
    p = _run_cli(cfg)
    kill_after = 3 + int(time.time()) % 3  # a step in the middle, different from run to run
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    p.send_signal(sig)
    rc = p.wait(300)
    assert rc in (-9, 143, -15), rc
    p = _run_cli(cfg)  # resume
    assert p.wait(600) == 0, p.stderr.read()
    got = _losses(out)
    assert sorted(got) == list(range(1, steps + 1))
    assert got == ref  # bit-identical losses


def test_two_process_fsdp2_matches_single_process(setup, tmp_path):
    single = tmp_path / "single"
    p = _run_cli(_yaml(setup, tmp_path / "s.yaml", single, max_steps=5, grad_accum=2))
    assert p.wait(600) == 0, p.stderr.read()
    multi = tmp_path / "multi"
    cfg = _yaml(setup, tmp_path / "m.yaml", multi, max_steps=5, grad_accum=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29500 + os.getpid() % 1000), "-m", "qwenvl", "train", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(single), _losses(multi)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for k in a:  # same bins and normalisation; only the reduction order differs
        assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_export_reloads_with_identical_logits(setup, tmp_path):
    from qwenvl.train.trainer import Trainer

    t = Trainer(_cfg(setup, tmp_path / "run", max_steps=2, export=True))
    t.fit(resume=False)
    exported = tmp_path / "run" / "export"
    msgs = [{"role": "user", "content": [{"type": "image", "image": str(setup[2] / "img0.png")},
                                         {"type": "text", "text": "What colour is the square?"}]}]
    t.model.eval()
    batch = t.vlm.processor(msgs)
    with torch.no_grad():
        want = t.model(**batch.model_inputs())
    again = qwenvl.load(exported, dtype=torch.float32, pack=False)
    assert torch.equal(again.forward(batch), want)
    from oracle import reference_logits
    from transformers import Qwen2_5_VLForConditionalGeneration
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(exported, torch_dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    ref = reference_logits(hf, {k: v for k, v in batch.model_inputs().items() if v is not None})
    assert (ref - want).abs().max().item() <= 1e-4


def test_config_errors_are_clear(setup, tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"stage": "sft", "learning_rate": 1})
    with pytest.raises(ValueError, match="stage must be one of"):
        TrainConfig.from_dict({"stage": "pretrain"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\nlr: [1, 2\n")
    r = subprocess.run([sys.executable, "-m", "qwenvl", "train", "--config", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not valid YAML" in r.stderr


def test_dpo_stage_starts_at_log2_and_learns_the_preference(setup, tmp_path):
    from qwenvl.train.trainer import Trainer

    _, _, d = setup
    pairs = []
    for i, name in enumerate(["red", "blue", "green", "red"]):
        pairs.append({"prompt": [{"role": "user", "content": [{"type": "image", "image": f"img{i}.png"},
                                                             {"type": "text", "text": "What colour is it?"}]}],
                      "chosen": f"It is {name}.", "rejected": "I do not know, sorry."})
    f = d / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    cfg = _cfg(setup, tmp_path / "dpo", stage="dpo", data=[str(f)], lr=2e-3, max_steps=12, beta=0.5,
               warmup_steps=0)
    t = Trainer(cfg)
    assert not any(p.requires_grad for n, p in t.model.named_parameters()
                   if n.startswith("visual.") and not n.startswith("visual.merger."))
    hist = t.fit(resume=False)
    assert abs(hist[0]["loss"] - np.log(2)) < 1e-5  # policy == reference at the first step
    assert hist[-1]["loss"] < 0.3 and hist[-1]["accuracy"] == 1.0
    assert (tmp_path / "dpo" / "reference_logps.json").is_file()


def test_activation_checkpointing_gives_the_same_gradients(setup):
    from qwenvl.train.data import SFTData

    ckpt, data, _ = setup
    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    for p in vlm.model.parameters():
        p.requires_grad_(True)
    batch = collate([SFTData([str(data)], vlm.processor)[i] for i in (0, 1, 3)])
    grads = []
    for on in (False, True):
        vlm.model.visual.gradient_checkpointing = vlm.model.model.gradient_checkpointing = on
        vlm.model.zero_grad(set_to_none=True)
        s, _, _ = packed_loss(vlm.model, batch)
        s.backward()
        grads.append({n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n


def test_param_groups_follow_switches_and_module_learning_rates(setup):
    from qwenvl.train.trainer import param_groups

    vlm = qwenvl.load(setup[0], dtype=torch.float32, pack=False)
    cfg = _cfg(setup, "unused", stage="all", lr=1e-4, vision_lr=1e-6, merger_lr=1e-5, weight_decay=0.1)
    groups = param_groups(vlm.model, cfg)
    by = {}
    for g in groups:
        by.setdefault(g["name"], set()).add(g["lr"])
        if g["weight_decay"]:
            assert all(p.dim() >= 2 for p in g["params"])
    assert by == {"vision": {1e-6}, "merger": {1e-5}, "llm": {1e-4}}
    n_train = sum(p.numel() for g in groups for p in g["params"])
    assert n_train == sum(p.numel() for p in vlm.model.parameters())  # tied weights counted once
    cfg = _cfg(setup, "unused", stage="vision")
    groups = param_groups(vlm.model, cfg)
    assert {g["name"] for g in groups} == {"vision", "merger"}
    assert not any(p.requires_grad for n, p in vlm.model.named_parameters() if n.startswith("model."))


def _torchrun(cfg, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29500 + (os.getpid() + int(time.time())) % 1000), "-m", "qwenvl", "train",
                           "--config", str(cfg)], capture_output=True, text=True, timeout=timeout, env=env)


def test_fsdp2_sharded_checkpoint_resume(setup, tmp_path):
    """Two processes save sharded checkpoints (torch.distributed.checkpoint); a run stopped after 2 steps and
    restarted reproduces the uninterrupted 4-step run's losses."""
    full = tmp_path / "full"
    r = _torchrun(_yaml(setup, tmp_path / "f.yaml", full, max_steps=4, save_every=1))
    assert r.returncode == 0, r.stderr[-3000:]
    part = tmp_path / "part"
    r = _torchrun(_yaml(setup, tmp_path / "p2.yaml", part, max_steps=2, save_every=1, export=False))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (part / "checkpoints" / "latest-dcp").is_file()
    r = _torchrun(_yaml(setup, tmp_path / "p4.yaml", part, max_steps=4, save_every=1))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(full), _losses(part)
    assert sorted(b) == [1, 2, 3, 4]
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])), (k, a[k], b[k])
