"""Checkpoint loading and saving: both key layouts, shards, strict errors, round trip through the oracle."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import qwenvl
from oracle import InputBuilder, reference_logits
from qwenvl.config import ConfigError
from qwenvl.weights import CheckpointError, save_model

ROWS = [[4, ("image", (1, 8, 12)), 6]]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(path, fn):
    f = path / "model.safetensors"
    sd = load_file(str(f))
    sd = fn(sd)
    f.unlink()
    save_file(sd, str(f), metadata={"format": "pt"})


def test_new_key_layout_loads(ref_dir, tmp_path):
    path, hf, cfg = ref_dir
    new = _copy(path, tmp_path / "new_layout")

    def rename(sd):
        out = {}
        for k, v in sd.items():
            if k.startswith("visual."):
                k = "model." + k
            elif k.startswith("model."):
                k = "model.language_model." + k[len("model."):]
            out[k] = v
        return out

    _rewrite_weights(new, rename)
    assert any(k.startswith("model.language_model.") for k in load_file(str(new / "model.safetensors")))
    inputs = InputBuilder(cfg, seed=1).batch(ROWS)
    a = qwenvl.load(path, dtype="float32").forward(qwenvl.Batch.from_dict(inputs))
    b = qwenvl.load(new, dtype="float32").forward(qwenvl.Batch.from_dict(inputs))
    assert torch.equal(a, b)


def test_sharded_save_round_trips_through_ours_and_reference(ref_dir, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    path, hf, cfg = ref_dir
    vlm = qwenvl.load(path, dtype="float32")
    out = tmp_path / "sharded"
    save_model(vlm.model, out, max_shard_bytes=400_000)
    shutil.copy(path / "tokenizer.json", out)
    shutil.copy(path / "tokenizer_config.json", out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert all(k.startswith(("visual.", "model.", "lm_head.")) for k in index["weight_map"])
    inputs = InputBuilder(cfg, seed=2).batch(ROWS)
    ref = reference_logits(hf, inputs)
    again = qwenvl.load(out).forward(qwenvl.Batch.from_dict(inputs))
    assert torch.equal(again, vlm.forward(qwenvl.Batch.from_dict(inputs)))
    hf2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, torch_dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    assert (reference_logits(hf2, inputs) - ref).abs().max().item() == 0.0


def test_tied_save_omits_lm_head_and_reference_reloads(ref_dir_tied, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    path, hf, cfg = ref_dir_tied
    vlm = qwenvl.load(path)
    out = tmp_path / "tied"
    vlm.save(out)
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    assert (out / "tokenizer.json").is_file()
    hf2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    inputs = InputBuilder(cfg, seed=3).batch(ROWS)
    assert torch.equal(reference_logits(hf2, inputs), reference_logits(hf, inputs))


def test_dtype_defaults_to_checkpoint_and_accepts_names(ref_dir):
    path, _, _ = ref_dir
    assert qwenvl.load(path).dtype == torch.float32  # torch_dtype in config.json
    assert qwenvl.load(path, dtype="bf16").dtype == torch.bfloat16
    # every weight converted, whether or not the CPU packs the linears (it does where bf16 is native)
    assert {p.dtype for p in qwenvl.load(path, dtype=torch.bfloat16).model.parameters()} == {torch.bfloat16}
    assert qwenvl.load(path, dtype=torch.bfloat16, pack=False).model.visual.blocks[0].attn.qkv.weight.dtype == \
        torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        qwenvl.load(path, dtype="float8")


def test_missing_shard_is_named(ref_dir, tmp_path):
    path, _, _ = ref_dir
    vlm = qwenvl.load(path)
    out = tmp_path / "broken"
    vlm.save(out)
    save_model(vlm.model, out, max_shard_bytes=400_000)
    sorted(out.glob("model-*.safetensors"))[1].unlink()
    with pytest.raises(CheckpointError, match=r"missing shard file\(s\) model-0000\d-of"):
        qwenvl.load(out)


def test_renamed_key_lists_missing_and_unexpected(ref_dir, tmp_path):
    path, _, _ = ref_dir
    bad = _copy(path, tmp_path / "renamed")
    _rewrite_weights(bad, lambda sd: {("model.layers.0.mlp.gate.weight" if k == "model.layers.0.mlp.gate_proj.weight"
                                       else k): v for k, v in sd.items()})
    with pytest.raises(CheckpointError) as e:
        qwenvl.load(bad)
    msg = str(e.value)
    assert "missing 1: model.layers.0.mlp.gate_proj.weight" in msg
    assert "unexpected 1: model.layers.0.mlp.gate.weight" in msg


def test_wrong_shape_is_reported(ref_dir, tmp_path):
    path, _, _ = ref_dir
    bad = _copy(path, tmp_path / "shape")
    _rewrite_weights(bad, lambda sd: {k: (v[:-1] if k == "visual.merger.mlp.2.bias" else v) for k, v in sd.items()})
    with pytest.raises(CheckpointError, match=r"wrong shape 1: visual.merger.mlp.2.bias: file \[127\] vs model \[128\]"):
        qwenvl.load(bad)


def test_other_model_type_is_rejected(ref_dir, tmp_path):
    path, _, _ = ref_dir
    bad = _copy(path, tmp_path / "llava")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "llava"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type='llava'"):
        qwenvl.load(bad)


def test_missing_directory_and_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qwenvl.load(tmp_path / "nope")
    from qwenvl import embedded
    monkeypatch.setattr(embedded, "DIR", tmp_path)  # a partial install without the bundled weights
    with pytest.raises(FileNotFoundError, match="embedded default model is missing"):
        qwenvl.load()


def test_no_weight_files(ref_dir, tmp_path):
    path, _, _ = ref_dir
    bad = _copy(path, tmp_path / "noweights")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        qwenvl.load(bad)
