"""Tokenizer from `tokenizer.json` (the `tokenizers` library), with Qwen special-token ids read from the
files, never hard-coded (reference.md §8.3)."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
REQUIRED = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>")


class TokenizerError(ValueError):
    pass


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON ({e})") from None


class Tokenizer:
    """Thin wrapper: encode/decode, special ids by name, and the files' chat template and eos settings."""

    def __init__(self, tok: _HFTokenizer, tokenizer_config: dict | None = None, chat_template: str | None = None):
        self.tok = tok
        self.config = tokenizer_config or {}
        self.chat_template = chat_template or self.config.get("chat_template")
        vocab = tok.get_vocab(with_added_tokens=True)
        self.special_ids = {t: vocab[t] for t in SPECIAL_TOKENS if t in vocab}
        absent = [t for t in REQUIRED if t not in self.special_ids]
        if absent:
            raise TokenizerError(f"tokenizer lacks Qwen special tokens {absent}; use the checkpoint's tokenizer.json")
        self.all_special_ids = frozenset(i for i, a in tok.get_added_tokens_decoder().items() if a.special) | \
            frozenset(self.special_ids.values())

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        f = path / "tokenizer.json"
        if not f.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}; the checkpoint directory needs its tokenizer files")
        try:
            tok = _HFTokenizer.from_file(str(f))
        except Exception as e:  # the tokenizers library raises its own Exception type
            raise TokenizerError(f"cannot read {f}: {e}") from None
        cfg = _read_json(path / "tokenizer_config.json")
        template = _read_json(path / "chat_template.json").get("chat_template")
        jinja = path / "chat_template.jinja"
        if template is None and jinja.is_file():
            template = jinja.read_text()
        return cls(tok, cfg, template)

    # ids by role ------------------------------------------------------------
    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    @property
    def im_start_id(self) -> int:
        return self.special_ids["<|im_start|>"]

    @property
    def im_end_id(self) -> int:
        return self.special_ids["<|im_end|>"]

    @property
    def eos_id(self) -> int:
        eos = self.config.get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        return self.token_id(eos) if eos else self.im_end_id

    @property
    def pad_id(self) -> int:
        pad = self.config.get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        return self.token_id(pad) if pad else self.special_ids["<|endoftext|>"]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    # text <-> ids -----------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special tokens written in the text become their single ids. No BOS is added."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
