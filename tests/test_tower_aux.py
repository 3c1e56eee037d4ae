"""The tower's auxiliary stage (qwenvl.train.tower_aux): each merged token is labelled with the object its cell lies
in (shared cells left out), the anchor is a relative distance, and the command trains only the vision tower, writes
a loadable model directory and its log, and names a file without grounding scenes."""
import json

import pytest
import torch
from safetensors.torch import load_file

from qwenvl.synth.build import build_dataset
from qwenvl.train.tower_aux import anchor_error, cell_labels, glyph_cells, main


def test_cells_inside_a_box_belong_to_its_object():
    meta = {"original": [112, 112], "resized": [112, 112]}  # 4 x 4 cells of 28 px
    objs = [{"box": [0, 0, 56, 56]}, {"box": [90, 90, 100, 100]}]
    # object 0: cell centres (14, 14), (42, 14), (14, 42), (42, 42) lie inside; object 1: only its centre cell
    assert cell_labels(objs, meta, (4, 4), 28) == {0: 0, 1: 0, 4: 0, 5: 0, 15: 1}


def test_a_cell_claimed_by_two_boxes_is_left_out_and_boxes_are_mapped_to_the_resized_frame():
    meta = {"original": [56, 112], "resized": [112, 224]}  # 2x scale; 4 x 8 cells
    objs = [{"box": [0, 0, 28, 28]}, {"box": [14, 14, 42, 28]}]  # resized: [0, 0, 56, 56] and [28, 28, 84, 56]
    lab = cell_labels(objs, meta, (4, 8), 28)
    assert lab == {0: 0, 1: 0, 8: 0, 10: 1}  # cell 9 (centre (42, 42)) lies in both boxes


def test_anchor_error_is_relative():
    ref = torch.randn(10, 8)
    assert anchor_error(ref, ref).item() == 0.0
    assert abs(anchor_error(torch.zeros_like(ref), ref).item() - 1.0) < 1e-6
    assert abs(anchor_error(1.1 * ref, ref).item() - 0.01) < 1e-6
    moved = torch.cat([ref[:4] * 3.0, ref[4:]])  # only the first 4 tokens move
    keep = torch.tensor([False] * 4 + [True] * 6)
    assert anchor_error(moved, ref, keep).item() == 0.0 and anchor_error(moved, ref).item() > 0.5
    assert anchor_error(moved, ref, ~keep).item() > 1.0
    assert anchor_error(moved, ref, torch.zeros(10, dtype=torch.bool)).item() == 0.0


def test_anchor_on_grounding_scenes_holds_their_tokens_only(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    build_dataset(tmp_path / "g", n_per_task={"computer_use": 3, "refer": 3}, split="train", seed=8)
    f = str(tmp_path / "g" / "train.jsonl")
    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["-m", str(ckpt), "--data", f, "--heldout", f, "--out", str(out), "--steps", "2", "--head-steps", "0",
                 "--batch", "6", "--element-names", "--element-cells", "label", "--anchor-scenes", "grounding",
                 "--lr", "1e-2"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # both figures are measured: all tokens, and the grounding scenes' tokens alone
    assert row["anchor_err"] > 0.0 and row["anchor_err_grounding"] > 0.0
    # no grounding scene to hold: a clear error naming the fix
    build_dataset(tmp_path / "u", n_per_task={"computer_use": 2}, split="train", seed=9)
    u = str(tmp_path / "u" / "train.jsonl")
    assert main(["-m", str(ckpt), "--data", u, "--heldout", u, "--out", str(out), "--steps", "1",
                 "--anchor-scenes", "grounding"]) == 2
    assert "--anchor-scenes all" in capsys.readouterr().err


def test_command_trains_the_tower_only_and_writes_a_loadable_model(tmp_path, capsys):
    import qwenvl
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    for split, n in (("train", 8), ("heldout", 3)):
        build_dataset(tmp_path / "d", n_per_task={"detect": n}, split=split, seed=5, curriculum=1,
                      extra={"image_size": (112, 168)})
    out = tmp_path / "out"
    rc = main(["-m", str(ckpt), "--data", str(tmp_path / "d" / "train.jsonl"), "--heldout",
               str(tmp_path / "d" / "heldout.jsonl"), "--out", str(out), "--steps", "6", "--head-steps", "2",
               "--batch", "2", "--eval-every", "3", "--lr", "1e-3"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 6 and last["tokens"] > 0 and 0.0 <= last["shape_acc"] <= 1.0
    assert last["anchor_err"] > 0.0  # the tower moved
    rows = [json.loads(line) for line in (out / "tower_aux.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k].float(), after[k].float())}
    assert moved and all(k.startswith("visual.") for k in moved)
    qwenvl.load(out, dtype=torch.float32)  # loads strictly


def test_a_file_without_grounding_or_text_scenes_is_named(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "v", n_per_task={"key_values": 2}, split="heldout", seed=5)
    f = str(tmp_path / "v" / "heldout.jsonl")
    assert main(["-m", str(ckpt), "--data", f, "--heldout", f, "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "heldout.jsonl" in err and "grounding record" in err


def test_glyph_cells_put_each_character_in_the_cell_under_its_centre():
    from qwenvl.synth import font

    f = font(20, "dejavu-mono")  # monospaced: every advance is the same
    adv = f.getlength("0")
    left = 3
    text = "AB CD"
    ink = f.getbbox(text)[0]
    meta = {"original": [56, 140], "resized": [112, 280], "font": "dejavu-mono", "font_size": 20}  # 2x; 4 x 10 cells
    lab = glyph_cells([{"text": text, "box": [left + ink, 30, left + ink + 5 * adv, 50]}], meta, (4, 10), 28)
    want = {}
    for i, ch in enumerate(text):
        if ch != " ":  # centre (left + (i + 0.5) adv) * 2 px; the line's middle row 40 * 2 = 80 px -> row 2
            want.setdefault(2 * 10 + int((left + (i + 0.5) * adv) * 2 // 28), []).append(ch)  # reading order
    assert lab == want and sum(len(v) for v in lab.values()) == 4


def test_text_scenes_train_a_glyph_head_beside_the_shape_heads(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "d", n_per_task={"detect": 4, "read_text": 4, "spot_text": 2}, split="train", seed=7,
                  curriculum=1)
    build_dataset(tmp_path / "h", n_per_task={"read_text": 3}, split="heldout", seed=8, curriculum=1)
    out = tmp_path / "out"
    rc = main(["-m", str(ckpt), "--data", str(tmp_path / "d" / "train.jsonl"), "--heldout",
               str(tmp_path / "h" / "heldout.jsonl"), "--out", str(out), "--steps", "4", "--head-steps", "1",
               "--batch", "3", "--eval-every", "4"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["text_cells"] > 0 and 0.0 <= last["glyph_f1"] <= 1.0 and "shape_acc" in last
    row = json.loads((out / "tower_aux.jsonl").read_text().splitlines()[-1])
    assert row["train_glyph_ce"] > 0.0


def test_glyph_slots_train_a_reading_order_head_on_large_text_only(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint
    from qwenvl.train.tower_aux import Batcher, scenes, text_px
    import qwenvl

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "d", n_per_task={"read_text": 6}, split="train", seed=3, curriculum=1)
    f = tmp_path / "d" / "train.jsonl"
    sc = scenes(f)
    # the slot targets: each cell's characters in reading order, padded with "none" (index len(glyphs))
    vlm = qwenvl.load(ckpt, dtype=torch.float32, pack=False)
    glyphs = sorted({ch for _, _, m in sc for ln in m["lines"] for ch in ln["text"] if not ch.isspace()})
    _, _, _, _, (gidx, rows) = Batcher(vlm, {}, glyphs, 3)(sc[:2])
    multi = Batcher(vlm, {}, glyphs)(sc[:2])[4][1]
    assert rows.shape == (len(gidx), 3) and rows.dtype == torch.long
    for r, m in zip(rows, multi):  # the slots name characters of the multi-hot row, filled from the first slot
        filled = [int(i) for i in r if i < len(glyphs)]
        assert filled and set(filled) <= set(m.nonzero().flatten().tolist()) and r[:len(filled)].tolist() == filled
    assert (rows < len(glyphs)).sum(-1).max() >= 2  # cells hold several characters, each in its own slot
    cut = sorted(text_px(m) for _, _, m in sc)[3]
    out = tmp_path / "out"
    rc = main(["-m", str(ckpt), "--data", str(f), "--heldout", str(f), "--out", str(out), "--steps", "2",
               "--head-steps", "1", "--batch", "2", "--glyph-slots", "3", "--min-text-px", str(cut)])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["text_cells"] > 0 and 0.0 <= last["glyph_f1"] <= 1.0 and 0.0 <= last["glyph_exact"] <= 1.0
    assert main(["-m", str(ckpt), "--data", str(f), "--heldout", str(f), "--out", str(out), "--steps", "1",
                 "--min-text-px", "1000"]) == 2
    assert "--min-text-px" in capsys.readouterr().err


def test_gui_screenshots_give_their_labels_to_the_glyph_head(tmp_path):
    from collections import Counter

    from qwenvl.train.tower_aux import scenes, text_lines

    build_dataset(tmp_path / "g", n_per_task={"computer_use": 3}, split="train", seed=4)
    sc = scenes(tmp_path / "g" / "train.jsonl")  # the screenshot sits in the last message, after the tool prompt
    assert len(sc) == 3
    for path, objs, meta in sc:
        lines = text_lines(meta)
        assert objs == [] and {ln["text"] for ln in lines} == {e["name"] for e in meta["elements"]}
        rh, rw = meta["resized"]
        got = Counter(ch for chars in glyph_cells(lines, meta, (rh // 28, rw // 28), 28).values() for ch in chars)
        assert got == Counter(ch for ln in lines for ch in ln["text"] if not ch.isspace())
        for ln, e in zip(lines, meta["elements"]):  # the label's ink lies on its element or beside it
            x0, y0, x1, y1 = ln["box"]
            assert x0 < x1 and y0 < y1 and abs((y0 + y1) / 2 - (e["box"][1] + e["box"][3]) / 2) < 12


def test_element_head_names_the_cells_a_click_lands_on(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint
    from qwenvl.train.tower_aux import element_cells, scenes

    build_dataset(tmp_path / "g", n_per_task={"computer_use": 4}, split="train", seed=5)
    f = tmp_path / "g" / "train.jsonl"
    sc = scenes(f)
    for _, _, meta in sc:
        rh, rw = meta["resized"]
        rows, cols = rh // 28, rw // 28
        cells = element_cells(meta, (rows, cols), 28)
        assert cells and set(cells.values()) <= {e["name"] for e in meta["elements"]}
        (oh, ow) = meta["original"]
        px, py = meta["point"]  # the target's centre cell is named after the target (unless another box claims it)
        k = min(int(py * rh / oh // 28), rows - 1) * cols + min(int(px * rw / ow // 28), cols - 1)
        target = meta["elements"][meta["target"]]["name"]
        assert cells.get(k, target) == target
        # label mode: only cells under a label's ink, each named after the element whose label it is
        lab = element_cells(meta, (rows, cols), 28, "label")
        assert lab and set(lab.values()) <= {e["name"] for e in meta["elements"]}
        for k, name in lab.items():
            r, c = divmod(k, cols)
            cx, cy = (c + 0.5) * 28 * ow / rw, (r + 0.5) * 28 * oh / rh
            mx, my = 14 * ow / rw, 14 * oh / rh  # half a cell, in original pixels
            inks = [e["label_box"] for e in meta["elements"] if e["name"] == name]
            assert any(b[0] - mx <= cx <= b[2] + mx and b[1] - my <= cy <= b[3] + my for b in inks)
    # a grounding record has no elements
    assert element_cells({"task": "refer", "objects": []}, (4, 4), 28) == {}
    with pytest.raises(ValueError, match="'box' or 'label'"):
        element_cells(sc[0][2], (4, 4), 28, "cells")
    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    rc = main(["-m", str(ckpt), "--data", str(f), "--heldout", str(f), "--out", str(out), "--steps", "2",
               "--head-steps", "1", "--batch", "2", "--element-names", "--element-cells", "label"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["element_cells"] > 0 and 0.0 <= last["element_acc"] <= 1.0
    row = json.loads((out / "tower_aux.jsonl").read_text().splitlines()[-1])
    assert row["train_element_ce"] > 0.0
    build_dataset(tmp_path / "r", n_per_task={"read_text": 2}, split="train", seed=6)
    rt = str(tmp_path / "r" / "train.jsonl")
    assert main(["-m", str(ckpt), "--data", rt, "--heldout", rt, "--out", str(out), "--steps", "1",
                 "--element-names"]) == 2
    assert "computer_use" in capsys.readouterr().err


def test_word_head_reads_names_along_the_language_models_embeddings(tmp_path, capsys):
    from qwenvl.api import load
    from qwenvl.tiny import make_random_checkpoint
    from qwenvl.train.tower_aux import WordHead

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    vlm = load(ckpt, dtype=torch.float32)
    names = ["Save", "Cancel", "Remember me"]
    head = WordHead(vlm, names)
    emb = vlm.model.model.embed_tokens.weight.detach()
    for k, n in enumerate(names):  # each row: the mean embedding of the name's tokens (with its leading space)
        assert torch.allclose(head.words[k], emb[vlm.tokenizer.encode(" " + n)].mean(0))
    # at the start the logits are the dot products with the word rows (scale 1, bias 0); only scale and bias learn
    t = head.words / head.words.norm(dim=-1, keepdim=True)
    assert torch.allclose(head(t), t @ head.words.T)
    assert [n for n, p in head.named_parameters()] == ["scale", "bias"]
    build_dataset(tmp_path / "g", n_per_task={"computer_use": 3, "refer": 2}, split="train", seed=11)
    f = str(tmp_path / "g" / "train.jsonl")
    out = tmp_path / "out"
    assert main(["-m", str(ckpt), "--data", f, "--heldout", f, "--out", str(out), "--steps", "2", "--head-steps",
                 "1", "--batch", "4", "--element-names", "--element-cells", "label", "--element-head", "words"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["element_cells"] > 0 and 0.0 <= last["element_acc"] <= 1.0
    assert json.loads((out / "tower_aux.jsonl").read_text().splitlines()[-1])["train_element_ce"] > 0.0
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {k for k in before if not torch.equal(before[k].float(), after[k].float())}
    assert moved and all(k.startswith("visual.") for k in moved)  # the language model's embeddings stay put
