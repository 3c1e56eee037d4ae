"""Config parsing: both HF layouts, rope_scaling vs rope_parameters, strictness, presets."""
import json

import pytest

from qwenvl.config import ConfigError, QwenVLConfig, preset
from qwenvl.tiny import build_tokenizer, tiny_config


@pytest.fixture(scope="module")
def flat():
    return tiny_config(build_tokenizer())


def nested(flat: dict, rope_key="rope_scaling") -> dict:
    text_keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings",
                 "hidden_act"]
    out = {k: v for k, v in flat.items() if k not in text_keys}
    text = {k: flat[k] for k in text_keys}
    if rope_key == "rope_parameters":
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": text.pop("rope_scaling")["mrope_section"],
                                   "rope_theta": text.pop("rope_theta")}
    out["text_config"] = text
    return out


def test_flat_and_nested_layouts_agree(flat):
    a = QwenVLConfig.from_hf(flat)
    b = QwenVLConfig.from_hf(nested(flat))
    c = QwenVLConfig.from_hf(nested(flat, "rope_parameters"))
    assert a.text == b.text == c.text
    assert a.vision == b.vision == c.vision
    assert a.image_token_id == c.image_token_id


def test_unknown_keys_are_kept_and_ignored(flat):
    cfg = QwenVLConfig.from_hf({**flat, "some_future_key": {"x": 1}, "vision_config": {**flat["vision_config"],
                                                                                        "new_thing": 3}})
    assert cfg.extra["some_future_key"] == {"x": 1}
    assert QwenVLConfig.from_hf(cfg.to_hf()) == cfg


def test_time_positions_round_trip_and_validation(flat):
    assert QwenVLConfig.from_hf(flat).time_positions == "absolute"
    assert "qwenvl_time_positions" not in QwenVLConfig.from_hf(flat).to_hf()  # HF layout untouched by default
    cfg = QwenVLConfig.from_hf({**flat, "qwenvl_time_positions": "frame_index"})
    assert cfg.time_positions == "frame_index" and "qwenvl_time_positions" not in cfg.extra
    assert QwenVLConfig.from_hf(cfg.to_hf()) == cfg
    with pytest.raises(ConfigError, match="qwenvl_time_positions must be 'absolute' or 'frame_index'"):
        QwenVLConfig.from_hf({**flat, "qwenvl_time_positions": "frames"})


@pytest.mark.parametrize("key", ["hidden_size", "rms_norm_eps", "image_token_id", "rope_scaling"])
def test_missing_required_key_is_named(flat, key):
    bad = {k: v for k, v in flat.items() if k != key}
    with pytest.raises(ConfigError, match="missing required keys"):
        QwenVLConfig.from_hf(bad)


def test_missing_vision_key_is_named(flat):
    bad = {**flat, "vision_config": {k: v for k, v in flat["vision_config"].items() if k != "tokens_per_second"}}
    with pytest.raises(ConfigError, match="vision_config.tokens_per_second"):
        QwenVLConfig.from_hf(bad)


def test_bad_mrope_section(flat):
    with pytest.raises(ConfigError, match="mrope_section"):
        QwenVLConfig.from_hf({**flat, "rope_scaling": {"type": "mrope", "mrope_section": [4, 4, 4]}})


def test_other_model_type(flat):
    with pytest.raises(ConfigError, match="model_type='qwen2_vl'"):
        QwenVLConfig.from_hf({**flat, "model_type": "qwen2_vl"})


def test_broken_json_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        QwenVLConfig.from_file(tmp_path)


def test_presets_have_the_real_shapes():
    p3, p7, p72 = preset("3b"), preset("Qwen2.5-VL-7B-Instruct"), preset("72B")
    assert (p3.text.hidden_size, p3.text.num_hidden_layers, p3.text.num_key_value_heads, p3.tie_word_embeddings) == \
        (2048, 36, 2, True)
    assert (p7.text.hidden_size, p7.text.intermediate_size, p7.text.vocab_size) == (3584, 18944, 152064)
    assert p72.text.num_hidden_layers == 80 and p72.vision.out_hidden_size == 8192
    for p in (p3, p7, p72):
        assert p.vision.hidden_size == 1280 and p.vision.fullatt_block_indexes == (7, 15, 23, 31)
        assert p.vision.tokens_per_second == 2 and p.text.mrope_section == (16, 24, 24)
    # parameter counts of the released models (3.75 B and 8.29 B)
    assert abs(p3.num_parameters / 1e9 - 3.75) < 0.02
    assert abs(p7.num_parameters / 1e9 - 8.29) < 0.02
    with pytest.raises(KeyError):
        preset("13b")


def test_preset_matches_reference_class_parameter_count():
    """Our count formula agrees with the reference module tree built (on meta) from the 3B preset."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = preset("3b").to_hf()
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**json.loads(json.dumps(cfg))))
    n = sum(p.numel() for p in hf.parameters())
    assert n == preset("3b").num_parameters
