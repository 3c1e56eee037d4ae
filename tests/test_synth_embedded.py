"""The embedded model's starting point: shape within the issue's budget, loads, and generates."""
import torch

import qwenvl
from qwenvl.model.layers import mrope_reach
from qwenvl.synth.embedded import init_checkpoint
from qwenvl.synth.tokenizer import save_tokenizer, train_tokenizer


def test_init_checkpoint_has_the_budgeted_shape_and_runs(tmp_path):
    text = "Outline the position of each red circle and output all the coordinates in JSON format. " * 50
    save_tokenizer(train_tokenizer([text], vocab_size=400, min_frequency=1), tmp_path / "tok")
    d = init_checkpoint(tmp_path / "init", tmp_path / "tok", seed=0)
    vlm = qwenvl.load(d, dtype=torch.float32, pack=False)
    n = sum(p.numel() for p in vlm.model.parameters())
    assert 5e6 <= n <= 20e6, n  # issue 7: roughly 5-20 M parameters
    assert n * 2 <= 40e6  # bf16 weights fit the 40 MB package budget
    c = vlm.config
    assert c.vision.fullatt_block_indexes and c.vision.window_size == 112 and c.vision.spatial_merge_size == 2
    assert sum(c.text.mrope_section) == c.text.head_dim // 2
    # the language model can place visual tokens: rows and columns of a 112-px picture (4 merged tokens) span
    # more than a radian of MRoPE (theta 50 spans 0.33 rad of columns there and its `cell` probe never learned
    # left/right; the official theta 1e6 with [16, 8, 8] spans 1e-4 rad)
    reach = mrope_reach(c.text.head_dim, c.text.rope_theta, c.text.mrope_section, 3)
    assert reach["h"] > 1.0 and reach["w"] > 1.0, reach
    g = vlm.generate([{"role": "user", "content": "hello"}], max_new_tokens=3)
    assert g.usage.completion_tokens <= 3
    norms = [p for n_, p in vlm.model.named_parameters() if n_.endswith("norm.weight")]
    assert norms and all(torch.all(p == 1) for p in norms)


def test_init_command_with_a_tokenizer_or_a_corpus(tmp_path, capsys):
    """`python -m qwenvl.synth.embedded init`: the from-scratch checkpoint from an existing tokenizer (what
    scripts/train_embedded.sh does with the package's), or from a tokenizer trained on synthetic JSONL."""
    import json

    import pytest

    from qwenvl.synth.build import build_dataset
    from qwenvl.synth.embedded import main

    text = "Locate the red circle and output its bbox coordinates in JSON format. " * 40
    save_tokenizer(train_tokenizer([text], vocab_size=400, min_frequency=1), tmp_path / "tok")
    main(["init", "--out", str(tmp_path / "a" / "init"), "--tokenizer", str(tmp_path / "tok"), "--seed", "3"])
    assert json.loads(capsys.readouterr().out)["init"] == str(tmp_path / "a" / "init")
    assert (tmp_path / "a" / "init" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    a = qwenvl.load(tmp_path / "a" / "init", dtype=torch.float32, pack=False)
    assert a.generate([{"role": "user", "content": "the red circle"}], max_new_tokens=2).usage.completion_tokens <= 2

    build_dataset(tmp_path / "d", n_per_task={"refer": 4, "count": 4}, split="train", seed=0, curriculum=0)
    main(["init", "--out", str(tmp_path / "b" / "init"), "--corpus", str(tmp_path / "d" / "train.jsonl"),
          "--vocab-size", "300"])
    assert (tmp_path / "b" / "tokenizer" / "tokenizer.json").is_file()
    b = qwenvl.load(tmp_path / "b" / "init", dtype=torch.float32, pack=False)
    ids = b.processor.tokenizer.encode("Locate the red circle")
    assert 0 < len(ids) < len("Locate the red circle")  # merges learned from the records' text

    with pytest.raises(SystemExit, match="tokenizer.json"):
        main(["init", "--out", str(tmp_path / "c"), "--tokenizer", str(tmp_path / "nothing-here")])
