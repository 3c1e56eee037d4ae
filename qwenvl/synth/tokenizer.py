"""The embedded model's tokenizer: byte-level BPE trained with `tokenizers` on the synthetic corpus.

Like Qwen2's tokenizer: the same pre-tokenizer split (every digit its own piece, letters in runs, punctuation
runs, newlines kept apart), byte-level alphabet (any text encodes, nothing is unknown), all 22 Qwen special
tokens appended after the learned vocabulary, and the real chat template.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..tokenizer import SPECIAL_TOKENS

# Qwen2's pre-tokenizer pattern (digits one by one: \p{N} without a quantifier)
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
NOT_SPECIAL = ("<tool_call>", "</tool_call>")  # added tokens that Qwen2.5 does not mark special (kept in decode)


def train_tokenizer(texts, vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE of about `vocab_size` tokens (the 256-byte alphabet included) on `texts`: an iterable of
    documents, or one string (split into paragraphs)."""
    if isinstance(texts, str):
        texts = [t for t in texts.split("\n\n") if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    add_qwen_tokens(tok)
    return tok


def add_qwen_tokens(tok: Tokenizer) -> None:
    """Append the 22 Qwen tokens in the official order; <tool_call> tags stay in decoded text as in Qwen2.5."""
    for t in SPECIAL_TOKENS:
        added = AddedToken(t, special=t not in NOT_SPECIAL, normalized=False)
        if t in NOT_SPECIAL:
            tok.add_tokens([added])
        else:
            tok.add_special_tokens([added])


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """tokenizer.json + tokenizer_config.json with the official chat template (readable by qwenvl and HF)."""
    from ..chat_template import DEFAULT_CHAT_TEMPLATE
    from ..tiny import write_tokenizer

    write_tokenizer(tok, path, chat_template=DEFAULT_CHAT_TEMPLATE)
    return Path(path)
