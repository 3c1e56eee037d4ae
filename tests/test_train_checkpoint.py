"""Training checkpoints: round trips of every state, bit-identical resume, pruning, fallbacks when `latest` or a
checkpoint is damaged, and SIGKILL in the middle of saves (random moments, several seeds)."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qwenvl.train.checkpoint import (MANIFEST, CheckpointError, NoCheckpointError, capture_rng, clean_temporaries,
                                     latest_step, list_checkpoints, load_checkpoint, restore_rng, save_checkpoint,
                                     verify_checkpoint)

REPO = Path(__file__).resolve().parent.parent


def _save(run, step, **kw):
    kw.setdefault("model_state", {"w": torch.full((3,), float(step))})
    return save_checkpoint(run, step, **kw)


# --- round trips ----------------------------------------------------------------------------------------------

def test_every_state_round_trips_with_types(tmp_path):
    emb = torch.randn(5, 4)
    big = torch.arange(24.0).reshape(4, 6)
    model_state = {
        "embed.weight": emb, "lm_head.weight": emb,  # tied: same tensor twice
        "t.weight": big.t(),  # non-contiguous view
        "row1": big[1], "row0": big[0],  # two views of one storage: the second is copied for safetensors
        "bf16": torch.randn(3, 2).to(torch.bfloat16), "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3), "flag": torch.tensor([True, False]),
    }
    lin = nn.Linear(4, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    lin(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    data = {"epoch": 2, "index": 17, "order": (3, 1, 2), 5: "int key", "perm": np.arange(6, dtype=np.int32),
            "nan": math.nan, "inf": -math.inf, "dtype": torch.float16, "__tensor__": "a key that looks like a tag"}
    extra = {"config": {"lr": 1e-3, "name": "tiny"}, "losses": [1.5, 1.25]}
    path = save_checkpoint(tmp_path, 12, model_state=model_state, optimizer_state=opt.state_dict(),
                           scheduler_state=sched.state_dict(), rng_state=capture_rng(), data_state=data, extra=extra)
    assert path == tmp_path / "step-00000012"
    assert (tmp_path / "latest").read_text() == "step-00000012\n"
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 12 and ck["path"] == path
    for k, v in model_state.items():
        got = ck["model_state"][k]
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
    assert ck["model_state"]["embed.weight"].data_ptr() == ck["model_state"]["lm_head.weight"].data_ptr()
    opt2 = torch.optim.AdamW(nn.Linear(4, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer_state"])
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == sd2["param_groups"] and sd2["param_groups"][0]["betas"] == (0.9, 0.95)
    for i in sd["state"]:
        for k in sd["state"][i]:
            assert torch.equal(sd["state"][i][k], sd2["state"][i][k])
    assert ck["scheduler_state"] == sched.state_dict()
    d = ck["data_state"]
    assert d["order"] == (3, 1, 2) and d[5] == "int key" and d["dtype"] is torch.float16
    assert d["perm"].dtype == np.int32 and d["perm"].tolist() == list(range(6))
    assert math.isnan(d["nan"]) and d["inf"] == -math.inf and d["__tensor__"] == "a key that looks like a tag"
    assert ck["extra"] == extra
    # the on-disk layout and the manifest
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted([MANIFEST, "model.safetensors", "model.json", "optimizer.safetensors", "optimizer.json",
                            "scheduler.json", "rng.safetensors", "rng.json", "data.json", "extra.json"])
    man = json.loads((path / MANIFEST).read_text())
    assert man["step"] == 12 and set(man["files"]) == set(names) - {MANIFEST}
    for name, info in man["files"].items():
        assert (path / name).stat().st_size == info["bytes"] and len(info["sha256"]) == 64


def test_unsupported_object_fails_cleanly_and_keeps_previous(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(TypeError, match="data_state|object|cannot checkpoint"):
        _save(tmp_path, 2, data_state={"f": object()})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert list_checkpoints(tmp_path) == [1] and load_checkpoint(tmp_path)["step"] == 1


def test_rng_capture_restore_in_memory_and_through_disk(tmp_path):
    gen = torch.Generator().manual_seed(3)

    def draw():
        return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(),
                torch.rand(2, generator=gen).tolist(),
                random.gauss(0, 1), np.random.normal())

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leave a cached gaussian in both python and numpy generators
    np.random.normal()
    state = capture_rng({"loader": gen})
    first = draw()
    restore_rng(state, {"loader": gen})
    assert draw() == first
    _save(tmp_path, 1, rng_state=state)
    draw()
    restore_rng(load_checkpoint(tmp_path)["rng_state"], {"loader": gen})
    assert draw() == first
    with pytest.raises(KeyError):
        restore_rng(state, {"other": torch.Generator()})


# --- resume is bit-identical ----------------------------------------------------------------------------------

def _make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.GELU(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 3) * 0.5 * (1 + math.cos(math.pi * s / 12)))  # warmup + cosine
    return model, opt, sched


def _train(model, opt, sched, data, steps, pos):
    losses = []
    for _ in range(steps):
        idx = random.sample(range(len(data[0])), 4)  # python RNG picks the batch
        noise = torch.from_numpy(np.random.normal(size=(4, 1)).astype(np.float32)) * 0.01  # numpy RNG
        x, y = data[0][idx], data[1][idx] + noise
        loss = nn.functional.mse_loss(model(x), y)  # torch RNG drives dropout
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        pos["index"] += 4
        losses.append(loss.item())
    return losses


def test_resume_continues_bit_identically(tmp_path):
    g = torch.Generator().manual_seed(5)
    data = (torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))

    def seed_all():
        random.seed(7)
        np.random.seed(7)

    model, opt, sched = _make()
    seed_all()
    full = _train(model, opt, sched, data, 10, {"index": 0})

    model, opt, sched = _make()
    seed_all()
    pos = {"index": 0}
    part = _train(model, opt, sched, data, 4, pos)
    save_checkpoint(tmp_path, 4, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                    scheduler_state=sched.state_dict(), rng_state=capture_rng(), data_state=pos)
    _train(model, opt, sched, data, 3, pos)  # the run goes on and is then lost

    model, opt, sched = _make()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ck = load_checkpoint(tmp_path)
    model.load_state_dict(ck["model_state"])
    opt.load_state_dict(ck["optimizer_state"])
    sched.load_state_dict(ck["scheduler_state"])
    restore_rng(ck["rng_state"])
    pos = ck["data_state"]
    assert pos == {"index": 16}
    rest = _train(model, opt, sched, data, 6, pos)
    assert part + rest == full  # exact equality, not approximate


# --- pruning, re-saving and damaged checkpoints ---------------------------------------------------------------

def test_keep_prunes_old_checkpoints_after_the_new_one_is_complete(tmp_path):
    for s in range(1, 6):
        _save(tmp_path, s, keep=2)
    assert list_checkpoints(tmp_path) == [4, 5] and latest_step(tmp_path) == 5
    _save(tmp_path, 3, keep=2)  # resumed from an older step: later steps are left alone, latest follows the save
    assert list_checkpoints(tmp_path) == [3, 4, 5] and latest_step(tmp_path) == 3
    other = tmp_path / "all"
    for s in range(1, 5):
        _save(other, s, keep=None)
    assert list_checkpoints(other) == [1, 2, 3, 4]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_resaving_a_step_replaces_it(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 2, model_state={"w": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path)["model_state"]["w"], torch.ones(2))


def test_fallbacks_when_latest_or_checkpoints_are_damaged(tmp_path):
    for s in (1, 2, 3):
        _save(tmp_path, s)
    latest = tmp_path / "latest"
    latest.unlink()
    assert load_checkpoint(tmp_path)["step"] == 3
    latest.write_text("garbage\x00")
    assert load_checkpoint(tmp_path)["step"] == 3
    latest.write_text("step-00000009\n")  # names a checkpoint that does not exist
    with pytest.warns(UserWarning, match="step-00000009"):
        assert load_checkpoint(tmp_path)["step"] == 3
    latest.write_text("step-00000002\n")  # latest is authoritative when valid
    assert load_checkpoint(tmp_path)["step"] == 2

    f = tmp_path / "step-00000002" / "model.safetensors"  # flip one byte: same size, wrong sha256
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="sha256"):
        ck = load_checkpoint(tmp_path)
    assert ck["step"] == 3  # falls back to the newest valid one
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path, step=2)
    with pytest.raises(CheckpointError, match="sha256"):
        verify_checkpoint(tmp_path / "step-00000002")
    assert load_checkpoint(tmp_path, step=2, verify=False)["step"] == 2  # sizes only

    (tmp_path / "step-00000003" / "data.json").write_text("{}")  # truncated / rewritten file
    (tmp_path / "step-00000004").mkdir()  # a step directory without a manifest (never written by us)
    (tmp_path / "step-00000004" / "model.json").write_text("{}")
    with pytest.warns(UserWarning):
        assert load_checkpoint(tmp_path)["step"] == 1
    with pytest.raises(NoCheckpointError):
        load_checkpoint(tmp_path, step=7)
    with pytest.raises(NoCheckpointError):
        load_checkpoint(tmp_path / "empty")
    assert latest_step(tmp_path / "empty") is None


def test_temporary_leftovers_are_ignored_and_cleaned(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    # what a killed save leaves: a half-written temp dir (even one with a manifest), a temp latest, a half deletion
    half = tmp_path / f".tmp-step-00000003.{dead_pid}.0123abcd"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    full = tmp_path / f".tmp-step-00000004.{dead_pid}.89abcdef"
    os.rename(_save(tmp_path / "x", 4), full)
    (tmp_path / f".tmp-latest.{dead_pid}.00000000").write_text("step-00000003\n")
    (tmp_path / f".tmp-del-step-00000001.{dead_pid}.11111111").mkdir()
    alive = tmp_path / f".tmp-step-00000005.{os.getppid()}.22222222"  # a live process's save in progress
    alive.mkdir()
    assert latest_step(tmp_path) == 2 and list_checkpoints(tmp_path) == [1, 2]
    assert load_checkpoint(tmp_path)["step"] == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([alive.name, "latest", "step-00000001", "step-00000002", "x"])
    assert clean_temporaries(tmp_path) == []


# --- SIGKILL in the middle of saves ---------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time, torch
    from qwenvl.train.checkpoint import save_checkpoint, capture_rng
    run, seed = sys.argv[1], int(sys.argv[2])
    base = torch.randn(256, 1024, generator=torch.Generator().manual_seed(seed))  # 1 MiB
    step = 0
    while True:
        step += 1
        model = {f"layers.{i}.weight": base + (step + i) for i in range(3)}
        opt = {"state": {i: {"step": torch.tensor(float(step)), "exp_avg": base * step, "exp_avg_sq": base * i}
                         for i in range(2)},
               "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}]}
        save_checkpoint(run, step, model_state=model, optimizer_state=opt, scheduler_state={"last_epoch": step},
                        rng_state=capture_rng(), data_state={"step": step, "index": 16 * step}, keep=2)
        print(step, time.monotonic(), flush=True)
""")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_sigkill_mid_save_leaves_a_loadable_checkpoint(tmp_path, seed):
    rnd = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(run), str(seed)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    try:
        first = proc.stdout.readline().split()  # step 1 is complete
        second = proc.stdout.readline().split()
        assert first and second, "the child died before saving twice"
        period = float(second[1]) - float(first[1])
        time.sleep(rnd.uniform(0, 3 * period))  # somewhere inside one of the next saves
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reported = [int(line.split()[0]) for line in out.splitlines() if line.strip()]
    last_done = reported[-1] if reported else int(second[0])

    ck = load_checkpoint(run)  # verify=True: every file's sha256 matches the manifest
    s = ck["step"]
    assert s >= last_done  # a save that returned is durable
    verify_checkpoint(ck["path"])
    base = torch.randn(256, 1024, generator=torch.Generator().manual_seed(seed))
    for i in range(3):
        assert torch.equal(ck["model_state"][f"layers.{i}.weight"], base + (s + i))
    assert ck["data_state"] == {"step": s, "index": 16 * s} and ck["scheduler_state"] == {"last_epoch": s}
    assert ck["optimizer_state"]["state"][1]["step"].item() == s
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]  # leftovers of the killed save are gone
    assert len(list_checkpoints(run)) <= 3
