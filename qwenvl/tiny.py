"""Tiny Qwen2.5-VL checkpoints made on the spot: a byte-level BPE tokenizer with the Qwen special tokens and a
randomly initialised model of the real architecture at toy width. Used by the demo and the tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import QwenVLConfig
from .tokenizer import SPECIAL_TOKENS

_CORPUS = """The quick brown fox jumps over the lazy dog. Describe this image. What is in the picture?
A red circle, a blue square and a green triangle on a white background. Count the stars: there are 3.
Locate every object and output bbox coordinates in JSON format. {"bbox_2d": [12, 34, 56, 78], "label": "cat"}
Read all the text in the image. Total: 42.50 USD. Date: 2026-11-28. The video shows a ball moving left.
The event happens from 3.5 to 7.0 seconds. Click the OK button. <tool_call>{"name": "computer_use"}</tool_call>
You are a helpful assistant. user assistant system 0 1 2 3 4 5 6 7 8 9 , . : ; ! ? ( ) [ ] { } " ' - _ / \\ + = * #
"""


def build_tokenizer(corpus: str = _CORPUS, vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE (digits split one by one) trained on `corpus`, then the 22 Qwen special tokens appended."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus.splitlines() * 4, trainer=trainer)
    from .synth.tokenizer import add_qwen_tokens
    add_qwen_tokens(tok)
    return tok


def write_tokenizer(tok: Tokenizer, path: str | Path, chat_template: str | None = None) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "bos_token": None, "model_max_length": 32768, "padding_side": "left", "errors": "replace",
           "add_prefix_space": False}
    if chat_template:
        cfg["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def tiny_config(tok: Tokenizer, **text_overrides) -> dict:
    """An HF-layout config.json dict of a toy Qwen2.5-VL whose token ids match `tok`."""
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab = (tok.get_vocab_size(with_added_tokens=True) + 63) // 64 * 64  # padded like the real embeddings
    cfg = dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl", vocab_size=vocab,
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
        max_position_embeddings=32768, hidden_act="silu", tie_word_embeddings=False, torch_dtype="float32",
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        vision_config=dict(depth=4, hidden_size=64, intermediate_size=96, num_heads=4, out_hidden_size=128,
                           fullatt_block_indexes=[1, 3], window_size=112, tokens_per_second=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, in_channels=3, hidden_act="silu"),
    )
    cfg.update(text_overrides)
    return cfg


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.08) -> None:
    """Redraw weights large enough that a wrong position or patch order moves logits far above 1e-4."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "layernorm" in name \
                or name.endswith("norm.weight") or name.endswith("ln_q.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(std * torch.randn(p.shape, generator=g))


def make_random_checkpoint(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a complete tiny checkpoint directory (random weights) with our own saver; returns the path."""
    from .model.qwenvl import QwenVL
    from .weights import save_model

    path = Path(path)
    tok = build_tokenizer()
    write_tokenizer(tok, path)
    cfg = QwenVLConfig.from_hf(tiny_config(tok))
    torch.manual_seed(seed)
    model = QwenVL(cfg)
    randomize_(model, seed)
    save_model(model.to(dtype), path)
    (path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
         "pad_token_id": tok.token_to_id("<|endoftext|>"), "do_sample": False}, indent=2) + "\n")
    return path
