"""The shipped embedded default model: it is in the package (and its wheel), loads with no path, answers held-out
grounding and counting examples (regenerated here from the held-out split's seed), and runs the main job end to end.
Its held-out scores, and the targets it still misses, are in docs/embedded-model.md."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import qwenvl
from qwenvl import embedded

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_SEED = 1  # scripts/train_embedded.sh / docs/embedded-model.md: the report's heldout-c0 (seed 1, level 0)
# what the shipped model scored on the first 10 records of heldout-c0 per task when it was shipped (greedy, bf16)
SHIPPED_SCORES = {"refer": 9, "point": 10, "count": 10}
SLACK = 1  # one miss of slack for numerics across machines


@pytest.fixture(scope="module")
def vlm():
    return qwenvl.load()


def test_shipped_weights_are_bf16_small_and_load_with_no_path(vlm):
    from safetensors import safe_open

    f = embedded.DIR / "model.safetensors"
    assert f.stat().st_size <= 40 * 2**20
    with safe_open(str(f), "pt") as st:
        dtypes = {str(st.get_slice(k).get_dtype()) for k in st.keys()}
    assert dtypes == {"BF16"}
    assert Path(vlm.path).resolve() == embedded.DIR
    n = sum(p.numel() for p in qwenvl.load(pack=False).model.parameters())
    assert 5e6 <= n <= 20e6


def test_wheel_carries_the_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("qwenvl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "example.png"):
        assert f"qwenvl/embedded/{f}" in names


def test_main_job_runs_the_embedded_model_on_the_bundled_example(tmp_path):
    """The README's main job end to end: a parsed answer on stdout, the annotated picture, the check line."""
    out = tmp_path / "demo.png"
    r = subprocess.run([sys.executable, "-m", "qwenvl", "demo", "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    answer = json.loads(r.stdout)
    assert isinstance(answer["count"], int) and answer["objects"], answer
    assert "check against the example's known objects" in r.stderr
    from PIL import Image
    assert Image.open(out).size == Image.open(embedded.EXAMPLE).size


def _heldout_records(tmp_path, task: str, n: int) -> list[dict]:
    from qwenvl.synth.build import build_dataset

    recs = build_dataset(tmp_path / task, n_per_task={task: n}, split="heldout", seed=HELDOUT_SEED, curriculum=0)
    for rec in recs:
        for part in rec["messages"][0]["content"]:
            if part.get("type") == "image":
                part["image"] = str(tmp_path / task / part["image"])
    return recs


@pytest.mark.parametrize("task", ["refer", "point", "count"])
def test_heldout_grounding_and_counting_examples(vlm, tmp_path, task):
    """Held-out grounding answered in the picture's own pixels (`refer`: the box at IoU >= 0.5 with the target;
    `point`: inside the target's box) and counting (`count`: the number, after the boxes), over the first 10
    one-shape records of the report's held-out split (heldout-c0, regenerated here from its seed). The shipped
    model scores SHIPPED_SCORES of 10 there (docs/embedded-model.md); the test asks for that less SLACK, so a
    regression in the model, the processor or the coordinate mapping fails it."""
    least = SHIPPED_SCORES[task] - SLACK
    from qwenvl.synth.evaluate import score

    recs = _heldout_records(tmp_path, task, 10)
    answers = [vlm.generate(r["messages"][:-1], max_new_tokens=160, temperature=0).text for r in recs]
    hits = [score(r, a)[0] for r, a in zip(recs, answers)]
    assert sum(hits) >= least, list(zip(hits, answers))
