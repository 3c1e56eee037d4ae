"""The claims command (issue 7, item 6): arms x held-out files -> one markdown table that names its command and
reproduces itself; the frame-index ablation reaches training samples and generation through the config."""
import json

import pytest
import torch

from qwenvl.synth.build import build_dataset
from qwenvl.synth.claims import main


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    from qwenvl.tiny import make_random_checkpoint

    d = tmp_path_factory.mktemp("arms")
    absolute = make_random_checkpoint(d / "absolute")
    frame = d / "frame"
    assert main(["variant", str(absolute), str(frame), "--time-positions", "frame_index"]) == 0
    return absolute, frame


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for fps in (1, 4):
        build_dataset(d, n_per_task={"video_grounding": 2}, split="heldout", seed=3, extra={"fps_choices": [fps]},
                      file_name=f"fps{fps}")
    return d


def _processor(path):
    from qwenvl.config import QwenVLConfig
    from qwenvl.processor import Processor
    from qwenvl.tokenizer import Tokenizer

    return Processor.from_dir(path, Tokenizer.from_dir(path), QwenVLConfig.from_file(path))


def test_frame_index_reaches_training_positions(arms, videos):
    from qwenvl.synth.evaluate import _absolute, load_records
    from qwenvl.train.data import build_sample

    rec = load_records(videos / "fps4.jsonl")[0]
    msgs = _absolute(rec["messages"], videos)
    pos = {}
    for arm in arms:
        s = build_sample(_processor(arm), msgs)
        vid = s.input_ids == _processor(arm).config.video_token_id
        pos[arm.name] = s.position_ids[0][vid].unique()
    t = int(s.video_grid_thw[0, 0])
    assert pos["frame"].tolist() == (pos["frame"][0] + torch.arange(t)).tolist()  # one id per temporal patch
    rec1 = load_records(videos / "fps1.jsonl")[0]  # about 2 s per temporal patch: about 4 ids per patch vs 1
    p1 = {a.name: build_sample(_processor(a), _absolute(rec1["messages"], videos)) for a in arms}
    v = p1["frame"].input_ids == _processor(arms[1]).config.video_token_id
    ta, tf = p1["absolute"].position_ids[0][v].unique(), p1["frame"].position_ids[0][v].unique()
    sec = float(p1["absolute"].second_per_grid_ts[0])
    assert 1.5 < sec < 2.5
    assert (ta - ta[0]).tolist() == [int(k * sec * 2) for k in range(len(tf))]  # tokens_per_second = 2
    assert (tf - tf[0]).tolist() == list(range(len(tf)))


def test_claims_command_end_to_end(arms, videos, tmp_path):
    out, js = tmp_path / "claim.md", tmp_path / "claim.json"
    argv = ["table", "--title", "Time", "--row-name", "sampling fps", "--arm", f"absolute={arms[0]}",
            "--arm", f"frame-index={arms[1]}", "--data", f"1={videos / 'fps1.jsonl'}",
            "--data", f"4={videos / 'fps4.jsonl'}", "--seen", "1", "--metric", "temporal_miou",
            "--metric", "temporal_r50", "--max-new-tokens", "8", "--prior", str(videos / "fps1.jsonl"),
            "--out", str(out), "--json", str(js)]
    assert main(argv) == 0
    text = out.read_text()
    assert "#### Time" in text and "python -m qwenvl.synth.claims table --title Time" in text
    assert "| sampling fps | n | Temporal mIoU: absolute | Temporal mIoU: frame-index | Temporal mIoU: blind prior | " \
        "Temporal R@0.5: absolute |" in text
    assert "blind prior: answers fitted on" in text
    assert "| 1 (seen in training) | 2 |" in text and "| 4 (unseen) | 2 |" in text
    grid = json.loads(js.read_text())
    assert set(grid) == {"absolute", "frame-index", "blind prior"} and set(grid["absolute"]) == {"1", "4"}
    assert all(0.0 <= grid[a][r]["temporal_miou"] <= 1.0 for a in grid for r in grid[a])
    assert main(argv) == 0 and out.read_text() == text  # rerunning reproduces the table


def test_claims_command_names_bad_arguments(arms, videos, tmp_path, capsys):
    with pytest.raises(SystemExit, match="must be NAME=PATH"):
        main(["table", "--arm", str(arms[0]), "--data", f"1={videos / 'fps1.jsonl'}", "--metric", "temporal_miou",
              "--out", str(tmp_path / "x.md")])
    with pytest.raises(SystemExit, match="no config.json there"):
        main(["table", "--arm", f"a={tmp_path}", "--data", f"1={videos / 'fps1.jsonl'}", "--metric", "temporal_miou",
              "--out", str(tmp_path / "x.md")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["table", "--arm", f"a={arms[0]}", "--data", f"1={tmp_path / 'none.jsonl'}", "--metric", "temporal_miou",
              "--out", str(tmp_path / "x.md")])


def test_variant_changes_only_the_setting_under_test(arms, tmp_path):
    from qwenvl.config import QwenVLConfig

    absolute, frame = arms
    a, f = QwenVLConfig.from_file(absolute), QwenVLConfig.from_file(frame)
    assert (a.time_positions, f.time_positions) == ("absolute", "frame_index")
    assert f.replace(time_positions="absolute") == a
    assert (frame / "model.safetensors").read_bytes() == (absolute / "model.safetensors").read_bytes()
    full = tmp_path / "full"
    assert main(["variant", str(absolute), str(full), "--full-attention"]) == 0
    v = QwenVLConfig.from_file(full).vision
    assert v.fullatt_block_indexes == tuple(range(v.depth)) and v.window_size == a.vision.window_size
    back = tmp_path / "back"  # and back again: the setting is replaced, not merged into the old file
    assert main(["variant", str(frame), str(back), "--time-positions", "absolute"]) == 0
    assert QwenVLConfig.from_file(back) == a and "qwenvl_time_positions" not in (back / "config.json").read_text()
    with pytest.raises(SystemExit, match="exists; remove it"):
        main(["variant", str(absolute), str(full), "--full-attention"])
    with pytest.raises(SystemExit, match="otherwise the copy is the same model"):
        main(["variant", str(absolute), str(tmp_path / "same")])
    with pytest.raises(SystemExit, match=r"usage: python -m qwenvl.synth.claims \{table,variant\}"):
        main(["--arm", "x"])


def test_blind_prior_is_fitted_and_scored_like_an_answer(tmp_path):
    from qwenvl.synth.claims import fit_prior, prior_answer
    from qwenvl.synth.report import aggregate, observe

    recs = build_dataset(tmp_path, n_per_task={"video_grounding": 6, "refer": 6, "point": 6}, split="train", seed=4)
    prior = fit_prior(recs)
    a, b = prior["span"]
    assert 0 <= a < b <= 1 and all(0 <= v <= 1 for v in prior["box"])
    obs = [observe(r, prior_answer(r, prior)) for r in recs]
    assert all(o["error"] is None for o in obs)  # every blind answer parses in its task's format
    agg = aggregate(obs)
    assert 0 < agg["temporal_miou"][0] <= 1 and 0 <= agg["point_acc"][0] <= 1
    # the fitted span is the best on the grid: nudging it never helps on the records it was fitted on
    from qwenvl.tasks.metrics import temporal_iou
    vids = [r["meta"] for r in recs if r["meta"]["task"] == "video_grounding"]
    fit = sum(temporal_iou((a * m["duration"], b * m["duration"]), tuple(m["span"])) for m in vids)
    for da, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        if 0 <= a + da < b + db <= 1:
            assert sum(temporal_iou(((a + da) * m["duration"], (b + db) * m["duration"]), tuple(m["span"]))
                       for m in vids) <= fit + 1e-9
