"""The visual-token probe (qwenvl.train.token_probe): the object's token is the one under its centre in the frame the
model saw, the probe reads a planted linear signal and not noise, and the command runs end to end on a tiny
checkpoint with synthetic scenes (and names a file without one-object scenes)."""
import json

import torch

from qwenvl.synth.build import build_dataset
from qwenvl.train.token_probe import centre_token, label_part, linear_probe, main, probe_parts


def test_centre_token_maps_the_box_to_the_resized_grid():
    meta = {"original": [218, 327], "resized": [224, 336]}  # (h, w); 8 x 12 merged cells of 28 px
    # centre (250.5, 59.5) in the original -> (257.2, 61.1) in the resized frame -> row 2, column 9
    assert centre_token([221, 30, 280, 89], meta, 28) == 2 * 12 + 9
    assert centre_token([0, 0, 27, 27], meta, 28) == 0
    assert centre_token([300, 200, 327, 218], meta, 28) == 8 * 12 - 1  # the last cell, never past the grid


def test_label_parts_prefer_the_meta_fields():
    assert label_part({"label": "cross", "colour": "red", "shape": "cross"}, "colour") == "red"
    assert label_part({"label": "light blue star"}, "colour") == "light blue"
    assert label_part({"label": "light blue star"}, "shape") == "star"


def test_linear_probe_reads_a_planted_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 32, generator=g)
    planted = x.clone()
    planted[:, :4] += 5 * torch.nn.functional.one_hot(y, 4)
    assert linear_probe(planted[:300], y[:300], planted[300:], y[300:], 4) > 0.9
    assert linear_probe(x[:300], y[:300], x[300:], y[300:], 4) < 0.45  # noise: about chance (0.25)


def test_probe_parts_reports_majority_and_unseen_classes():
    objs = [{"colour": c, "shape": s} for c, s in [("red", "star"), ("blue", "star")] * 20]
    x = torch.tensor([[1.0, 0.0] if o["colour"] == "red" else [0.0, 1.0] for o in objs])
    test = objs[:4] + [{"colour": "green", "shape": "star"}]
    res = probe_parts(x, objs, torch.cat([x[:4], torch.tensor([[0.5, 0.5]])]), test)
    assert res["colour"] == {"accuracy": 1.0, "majority": 0.5, "classes": 2, "unseen": 1}
    assert res["shape"]["accuracy"] is None and res["shape"]["classes"] == 1  # one class: nothing to probe


def test_command_end_to_end_on_a_tiny_checkpoint(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    for split, n in (("train", 12), ("heldout", 4)):
        build_dataset(tmp_path / "d", n_per_task={"detect": n}, split=split, seed=5, curriculum=0,
                      extra={"image_size": (112, 112)})
    rc = main(["-m", str(ckpt), "--train", str(tmp_path / "d" / "train.jsonl"), "--heldout",
               str(tmp_path / "d" / "heldout.jsonl")])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["train"] == 12 and row["heldout"] == 4
    for part in ("colour", "shape"):
        if row[part]["accuracy"] is not None:
            assert 0.0 <= row[part]["accuracy"] <= 1.0 and 0.0 < row[part]["majority"] <= 1.0


def test_a_file_without_one_object_scenes_is_named(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "v", n_per_task={"read_text": 2}, split="heldout", seed=5)
    f = str(tmp_path / "v" / "heldout.jsonl")
    assert main(["-m", str(ckpt), "--train", f, "--heldout", f]) == 2
    err = capsys.readouterr().err
    assert "heldout.jsonl" in err and "one-object grounding record" in err
