"""The embedded model's tokenizer: Qwen-style splitting, special tokens, chat template, lossless round trips."""
import pytest

from qwenvl.synth.tokenizer import save_tokenizer, train_tokenizer
from qwenvl.tokenizer import SPECIAL_TOKENS, Tokenizer

CORPUS = ["Outline the position of each red circle and output all the coordinates in JSON format.",
          '```json\n[\n\t{"bbox_2d": [123, 45, 678, 90], "label": "red circle"}\n]\n```',
          "The given query happens in 12.5 - 30.0 seconds.", "There are 7 items in the image.",
          '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [49, 43]}}\n'
          "</tool_call>", "Total: 1,234.56 USD\nDate: 2026-11-28"] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(CORPUS, vocab_size=300, min_frequency=1), d)
    return Tokenizer.from_dir(d)


def test_merges_are_learned_from_a_corpus_string():
    t = train_tokenizer("\n\n".join(CORPUS), vocab_size=320, min_frequency=1)
    assert t.get_vocab_size(with_added_tokens=False) >= 300  # merges learned, not bytes only
    assert len(t.encode("Outline the position of each red circle").ids) <= 25  # 39 bytes


def test_digits_are_split_one_by_one(tok):
    pieces = [tok.decode([i]) for i in tok.encode("bbox 123456 and 2026")]
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits and all(len(p.strip()) == 1 for p in digits), pieces


def test_round_trip_and_unseen_text(tok):
    for text in CORPUS[:6] + ["Ünïcödé 蛋糕 🎂 never seen", "\t\n  spaces  \n\n"]:
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_and_chat_template(tok):
    assert set(SPECIAL_TOKENS) <= set(tok.special_ids)
    ids = sorted(tok.special_ids[t] for t in SPECIAL_TOKENS)
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # appended after the learned vocabulary
    assert tok.encode("<|im_start|>user\nhi<|im_end|>")[0] == tok.im_start_id
    assert "<tool_call>" in tok.decode(tok.encode("<tool_call>x</tool_call>"), skip_special_tokens=True)
    assert "<|im_start|>" in tok.chat_template and "vision_start" in tok.chat_template
