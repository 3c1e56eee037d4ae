"""The click finder stage (qwenvl.train.click_aux): the named element's cells are its box and an outside caption,
the set loss is the softmax mass on them, and the command trains the language model only (towers untouched),
scores each held-out file on its own and names a bad layer."""
import json
import math

import torch
from safetensors.torch import load_file

from qwenvl.synth.build import build_dataset
from qwenvl.train.click_aux import look_loss, main, parse_look, set_loss, target_cells


def test_target_cells_are_the_named_elements_box_and_its_outside_caption():
    meta = {"task": "computer_use", "original": [112, 112], "resized": [112, 112], "target": 1,  # 4 x 4 cells
            "elements": [{"type": "button", "name": "OK", "box": [0, 0, 56, 28], "label_box": [10, 5, 40, 20]},
                         {"type": "field", "name": "City", "box": [60, 60, 112, 84], "label_box": [0, 62, 30, 80]}]}
    # the field's box holds cell centres (70, 70) and (98, 70): cells 10 and 11; its caption lies outside the box
    # and holds (14, 70): cell 8
    assert target_cells(meta, (4, 4), 28) == [8, 10, 11]
    meta["target"] = 0  # the button's label lies inside its box: only the box's cells (centres (14, 14), (42, 14))
    assert target_cells(meta, (4, 4), 28) == [0, 1]
    assert target_cells({"task": "detect", "objects": []}, (4, 4), 28) == []


def test_a_referred_or_pointed_objects_cells_are_its_box():
    meta = {"task": "point", "original": [56, 112], "resized": [112, 224], "box": [0, 0, 28, 28]}  # 2x: 4 x 8 cells
    assert target_cells(meta, (4, 8), 28) == [0, 1, 8, 9]
    assert target_cells({**meta, "task": "refer", "box": [100, 40, 104, 44]}, (4, 8), 28) == [31]  # its centre cell


def test_set_loss_is_the_log_mass_on_the_target_cells():
    uniform = torch.zeros(8)
    assert abs(set_loss(uniform, [2, 5]).item() - math.log(4)) < 1e-6
    sharp = torch.tensor([0.0, 0.0, 30.0, 0.0])
    assert set_loss(sharp, [2]).item() < 1e-6
    assert set_loss(sharp, [0]).item() > 20


def test_look_loss_is_the_log_share_of_image_attention_on_the_target():
    from types import SimpleNamespace

    attn = SimpleNamespace(n_heads=2, n_kv=1, head_dim=4, q_proj=torch.nn.Linear(8, 8), k_proj=torch.nn.Linear(8, 4))
    for lin in (attn.q_proj, attn.k_proj):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    x = torch.randn(10, 8)
    cos, sin = torch.ones(10, 4), torch.zeros(10, 4)  # no rotation
    kpos, qpos = torch.arange(0, 8), torch.tensor([8, 9])
    # all scores equal: each head spreads its image attention evenly, 2 of 8 cells are the target's
    loss, share = look_loss(attn, x, cos, sin, qpos, kpos, [1, 5], [0, 1])
    assert abs(loss.item() - 4 * math.log(4)) < 1e-5 and abs(share.item() - 4 * 0.25) < 1e-5
    # keys that point where the query points: the target cells take the attention
    attn.q_proj.bias.data.fill_(3.0)
    x = torch.zeros(10, 8)
    x[[1, 5], 0] = 1.0
    attn.k_proj.weight.data[:, 0] = 10.0
    loss, share = look_loss(attn, x, cos, sin, qpos, kpos, [1, 5], [0])
    assert loss.item() < 1e-3 and share.item() > 1.99


def test_look_specs_parse_and_a_bad_one_is_named():
    assert parse_look(["3:1,3,4", "4:0", "3:5"]) == {3: [1, 3, 4, 5], 4: [0]}
    try:
        parse_look(["three:1"])
    except ValueError as e:
        assert "LAYER:HEADS" in str(e)
    else:
        raise AssertionError("a bad --look spec was accepted")


def test_command_trains_the_language_model_only_and_scores_each_heldout_file(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "d", n_per_task={"computer_use": 6, "refer": 2}, split="train", seed=11)
    build_dataset(tmp_path / "h", n_per_task={"computer_use": 3}, split="heldout", seed=12)
    out = tmp_path / "out"
    rc = main(["-m", str(ckpt), "--data", str(tmp_path / "d" / "train.jsonl"), "--heldout",
               str(tmp_path / "h" / "heldout.jsonl"), "--out", str(out), "--steps", "4", "--head-steps", "2",
               "--batch", "4", "--eval-every", "2", "--lr", "1e-3"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 4
    assert last["h_find_loss"] > 0.0 and 0.0 <= last["h_find"] <= 1.0 and last["h_answer_loss"] > 0.0
    rows = [json.loads(line) for line in (out / "click_aux.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]  # the starting model, then every --eval-every steps
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    vis = [k for k in before if k.startswith("visual.")]
    lm = [k for k in before if k.startswith("model.layers.")]
    assert vis and lm
    assert all(torch.equal(before[k], after[k]) for k in vis)  # the towers stay
    assert any(not torch.equal(before[k], after[k]) for k in lm)  # the language model moved
    assert not any("proj.weight" == k for k in after)  # the finder head is not saved


def test_the_finder_can_learn_on_pointing_records_first_and_stay_frozen(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "p", n_per_task={"point": 4, "refer": 4}, split="train", seed=14)
    build_dataset(tmp_path / "c", n_per_task={"computer_use": 4}, split="train", seed=15)
    p, c = str(tmp_path / "p" / "train.jsonl"), str(tmp_path / "c" / "train.jsonl")
    rc = main(["-m", str(ckpt), "--head-data", p, "--freeze-head", "--data", c, "--heldout", p, "--heldout", c,
               "--out", str(tmp_path / "o"), "--steps", "3", "--head-steps", "2", "--batch", "4", "--eval-every", "3",
               "--look", "2:0,1", "--look-task", "computer_use"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # both held-out files scored on their own: the pointing records have targets too, and the look share is
    # measured where answers have digits
    assert last["p_find_loss"] > 0.0 and last["c_find_loss"] > 0.0
    assert 0.0 < last["p_look_share"] < 1.0 and 0.0 < last["c_look_share"] < 1.0


def test_a_layer_the_model_lacks_is_named(tmp_path, capsys):
    from qwenvl.tiny import make_random_checkpoint

    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    build_dataset(tmp_path / "d", n_per_task={"computer_use": 2}, split="train", seed=13)
    f = str(tmp_path / "d" / "train.jsonl")
    assert main(["-m", str(ckpt), "--data", f, "--heldout", f, "--out", str(tmp_path / "o"), "--steps", "1",
                 "--layer", "99"]) == 2
    err = capsys.readouterr().err
    assert "--layer 99" in err and "decoder layers" in err
    assert main(["-m", str(ckpt), "--data", f, "--heldout", f, "--out", str(tmp_path / "o"), "--steps", "1",
                 "--look", "2:9"]) == 2
    assert "--look 2:9" in capsys.readouterr().err
    assert main(["-m", str(ckpt), "--data", f, "--heldout", f, "--out", str(tmp_path / "o"), "--steps", "1",
                 "--look", "2:0", "--look-task", "computer-use"]) == 2
    err = capsys.readouterr().err
    assert "--look-task computer-use" in err and "computer_use" in err


def test_the_look_loss_can_be_kept_to_some_tasks(tmp_path):
    import qwenvl
    from qwenvl.tiny import make_random_checkpoint
    from qwenvl.train.click_aux import Finder, batch_losses, digit_ids
    from qwenvl.train.data import SFTData

    vlm = qwenvl.load(make_random_checkpoint(tmp_path / "ckpt"), dtype=torch.float32, pack=False)
    build_dataset(tmp_path / "p", n_per_task={"point": 2}, split="train", seed=16)
    build_dataset(tmp_path / "c", n_per_task={"computer_use": 2}, split="train", seed=17)
    data = SFTData([str(tmp_path / "p" / "train.jsonl"), str(tmp_path / "c" / "train.jsonl")], vlm.processor)
    head = Finder(vlm.config.text.hidden_size)
    digits = digit_ids(vlm.tokenizer, vlm.config.text.vocab_size)
    look = {2: [0, 1]}
    with torch.no_grad():
        every = batch_losses(vlm, head, data, [0, 1, 2, 3], 2, look, digits)
        clicks = batch_losses(vlm, head, data, [0, 1, 2, 3], 2, look, digits, {"computer_use"})
        points = batch_losses(vlm, head, data, [0, 1], 2, look, digits)
        none = batch_losses(vlm, head, data, [0, 1], 2, look, digits, {"computer_use"})
    assert points["n_look"] > 0 and none["n_look"] == 0 and float(none["look"]) == 0.0
    assert every["n_look"] == clicks["n_look"] + points["n_look"]
    assert abs(float(every["look"]) - float(clicks["look"]) - float(points["look"])) < 1e-3
    assert every["n_find"] == clicks["n_find"] == 4  # the finder still reads every record with a target
