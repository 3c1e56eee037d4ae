"""`qwenvl train sft|dpo`: the shipped tiny configs, command-line overrides, periodic held-out evaluation,
worker processes for batch preparation, and one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwenvl.cli_train import parse_overrides

ROOT = Path(__file__).resolve().parent.parent


def _qwenvl(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "qwenvl", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_parse_overrides_forms():
    assert parse_overrides(["--lr=1e-4", "--eval-every", "5", "--no-export", "--activation_checkpointing",
                            "--output-dir", "x"]) == ["lr=1e-4", "eval_every=5", "export=false",
                                                      "activation_checkpointing=true", "out_dir=x"]
    with pytest.raises(ValueError, match="overrides look like"):
        parse_overrides(["lr=1"])


def test_tiny_sft_config_runs_with_overrides_and_periodic_eval(tmp_path):
    out = tmp_path / "sft"
    r = _qwenvl("train", "sft", "--config", "configs/tiny-sft.yaml", "--max-steps", "4", "--output-dir", str(out),
                "--eval-every=2", "--eval-max-samples", "3", "--lr", "3e-3")
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["step"] == 4 and last["out_dir"] == str(out)
    ms = _metrics(out)
    assert [m["step"] for m in ms] == [1, 2, 3, 4]
    assert all(m["loss"] > 0 for m in ms)
    assert [m["step"] for m in ms if "eval_loss" in m] == [2, 4]  # every 2 steps, and at the end
    assert ms[-1]["eval_loss"] == pytest.approx(last["eval_loss"], abs=1e-6)
    assert ms[1]["lr"] == pytest.approx(3e-3 * 2 / 5)  # the --lr override reached the optimizer (warmup 5)
    assert (out / "export" / "config.json").is_file() and (out / "init" / "config.json").is_file()
    # a second invocation resumes from the checkpoint (nothing left to do at max_steps 4) ...
    r2 = _qwenvl("train", "sft", "--config", "configs/tiny-sft.yaml", "--max-steps", "4", "--output-dir", str(out),
                 "--resume")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert len(_metrics(out)) == 4


def test_tiny_dpo_config_reports_reward_accuracy(tmp_path):
    out = tmp_path / "dpo"
    r = _qwenvl("train", "dpo", "--config", "configs/tiny-dpo.yaml", "--max-steps", "2", "--output-dir", str(out),
                "--eval-every", "1", "--no-export")
    assert r.returncode == 0, r.stderr[-2000:]
    ms = _metrics(out)
    assert [m["step"] for m in ms] == [1, 2]
    for m in ms:
        assert 0.0 <= m["eval_reward_accuracy"] <= 1.0
        assert m["eval_loss"] > 0
    # at step 1 the policy is (almost) the reference: sigmoid loss ~ log 2 on held-out pairs
    assert ms[0]["eval_loss"] == pytest.approx(0.6931, abs=0.15)
    assert (out / "reference_logps_eval.json").is_file()
    assert not (out / "export").exists()


@pytest.mark.parametrize("args, needle", [
    (["train", "dpo", "--config", "configs/tiny-sft.yaml", "--output-dir", "{tmp}/d"], "qwenvl train sft"),
    (["train", "sft", "--config", "configs/tiny-dpo.yaml", "--output-dir", "{tmp}/s"], "train dpo"),
    (["train", "sft", "--config", "configs/tiny-sft.yaml", "--resume", "--output-dir", "{tmp}/empty"],
     "no checkpoint"),
    (["train", "sft", "--config", "configs/tiny-sft.yaml", "--learning-rat=1", "--output-dir", "{tmp}/x"],
     "learning_rat"),
    (["train", "sft", "--config", "configs/nope.yaml"], "nope.yaml"),
    (["generate", "--prompt", "hi", "--lr=1"], "unrecognized arguments"),
])
def test_train_cli_errors_are_one_line(tmp_path, args, needle):
    r = _qwenvl(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode != 0
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("INFO")]
    assert needle in lines[-1], r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_worker_processes_give_the_same_steps(tmp_path):
    """num_workers > 0 prepares the same bins in the same order: identical losses."""
    from qwenvl.train.config import TrainConfig
    from qwenvl.train.trainer import Trainer

    base = TrainConfig.from_file(ROOT / "configs" / "tiny-sft.yaml").to_dict()
    runs = []
    for w in (0, 2):
        cfg = TrainConfig.from_dict({**base, "out_dir": str(tmp_path / f"w{w}"), "max_steps": 3, "num_workers": w,
                                     "export": False, "autocast": "off", "eval_data": []})
        runs.append([m["loss"] for m in Trainer(cfg).fit(resume=False)])
    assert runs[0] == runs[1]


def test_time_budget_shortens_the_run_and_completes_the_schedule(tmp_path):
    """time_budget_min: the pace measured after 10 steps decides the total, the cosine ends at the end."""
    from qwenvl.train.config import TrainConfig
    from qwenvl.train.trainer import Trainer

    base = TrainConfig.from_file(ROOT / "configs" / "tiny-sft.yaml").to_dict()
    cfg = TrainConfig.from_dict({**base, "out_dir": str(tmp_path / "b"), "epochs": 40, "export": False,
                                 "eval_data": [], "time_budget_min": 0.25, "warmup_steps": 2, "min_lr_ratio": 0.0,
                                 "pack_length": 1024})
    t = Trainer(cfg)
    planned = t.total_steps
    ticks = iter(range(10_000))
    t.clock = lambda: float(next(ticks))  # one "second" per call: fit start, then one call per step
    hist = t.fit(resume=False)
    assert planned > 40
    assert len(hist) == 15  # 15 s at 1 s/step
    assert t.total_steps == 15
    assert hist[-1]["lr"] < 0.02 * cfg.lr  # the cosine reached (almost) its floor on the last step


def test_time_budget_refits_never_raise_the_learning_rate(tmp_path):
    """The pace changes mid-run (slow, then fast): each re-estimate moves total_steps, but the cosine keeps the
    progress it has reached, so after warm-up the rate only goes down, and it still ends at its floor."""
    from qwenvl.train.config import TrainConfig
    from qwenvl.train.trainer import Trainer

    base = TrainConfig.from_file(ROOT / "configs" / "tiny-sft.yaml").to_dict()
    cfg = TrainConfig.from_dict({**base, "out_dir": str(tmp_path / "p"), "epochs": 60, "export": False,
                                 "eval_data": [], "time_budget_min": 1.0, "warmup_steps": 3, "min_lr_ratio": 0.0,
                                 "pack_length": 1024})
    t = Trainer(cfg)

    def times():  # fit start, then one call per step: 10 steps of 2 s, then 0.5 s each
        now = 0.0
        yield now
        for i in range(10_000):
            now += 2.0 if i < 10 else 0.5
            yield now
    ticks = times()
    t.clock = lambda: next(ticks)
    hist = t.fit(resume=False)
    lrs = [m["lr"] for m in hist]
    after = lrs[cfg.warmup_steps:]
    assert len(hist) > 40  # shrunk to 30 steps after the slow start, then grown again by the faster pace
    assert all(b <= a * (1 + 1e-9) for a, b in zip(after, after[1:])), after
    assert lrs[-1] < 0.05 * cfg.lr


def test_eval_media_gap_is_logged(tmp_path):
    """eval_media_gap: the held-out loss with blank pictures next to the real one, and their difference."""
    out = tmp_path / "gap"
    r = _qwenvl("train", "sft", "--config", "configs/tiny-sft.yaml", "--max-steps", "2", "--output-dir", str(out),
                "--eval-every=2", "--eval-max-samples", "4", "--eval-media-gap", "true", "--no-export")
    assert r.returncode == 0, r.stderr[-2000:]
    last = _metrics(out)[-1]
    assert last["step"] == 2
    assert last["eval_media_gap"] == pytest.approx(last["eval_loss_blank_media"] - last["eval_loss"], abs=1e-9)
    assert last["eval_media_gap"] != 0.0
