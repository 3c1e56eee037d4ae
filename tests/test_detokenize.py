"""IncrementalDetokenizer on the tiny byte-level BPE: exact deltas, special tokens, stop strings."""
import random

import pytest

from qwenvl.detokenize import IncrementalDetokenizer
from qwenvl.tiny import build_tokenizer, write_tokenizer
from qwenvl.tokenizer import Tokenizer

TEXTS = ["Héllo 中文 🙂 world", "café🙂🙂 naïve — 42 ünïcödé", "The quick brown fox. 日本語のテキスト!",
         "a<|im_end|>b 中<|endoftext|>文", "🙂", "plain ascii only"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_tokenizer(build_tokenizer(), path)
    return Tokenizer.from_dir(path)


def stream(tok, ids, **kw):
    det = IncrementalDetokenizer(tok, **kw)
    deltas = [det.add(i) for i in ids]
    deltas.append(det.finish())
    return det, deltas


def test_multibyte_characters_really_are_split(tok):
    ids = tok.encode("中文🙂")
    assert len(ids) > 3 and any("\ufffd" in tok.decode([i]) for i in ids)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip", [True, False])
def test_deltas_concatenate_to_decode(tok, text, skip):
    ids = tok.encode(text)
    det, deltas = stream(tok, ids, skip_special_tokens=skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) == full == det.text
    assert not any("\ufffd" in d for d in deltas)
    assert not det.stopped and det.stop_string is None
    # text is released as soon as a character is complete, not all at the end
    assert deltas[-1] == ""
    assert sum(bool(d) for d in deltas) >= min(len(full), 2)


def test_special_tokens_dropped_or_kept(tok):
    ids = tok.encode("Hi") + [tok.im_end_id] + tok.encode("\n") + [tok.im_start_id]
    _, dropped = stream(tok, ids)
    assert "".join(dropped) == "Hi\n"
    _, kept = stream(tok, ids, skip_special_tokens=False)
    assert "".join(kept) == "Hi<|im_end|>\n<|im_start|>"
    assert kept[len(tok.encode("Hi"))] == "<|im_end|>"


def test_random_ids_including_invalid_utf8_match_decode(tok):
    rng = random.Random(0)
    words = tok.encode("Héllo 中文 🙂 world café the fox 123")
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) if rng.random() < 0.3 else rng.choice(words)
               for _ in range(rng.randrange(1, 50))]
        skip = rng.random() < 0.5
        full = tok.decode(ids, skip_special_tokens=skip)
        det, deltas = stream(tok, ids, skip_special_tokens=skip)
        assert "".join(deltas) == full
        if "\ufffd" not in full:
            assert not any("\ufffd" in d for d in deltas)


def test_stop_string_over_several_tokens(tok):
    text = "Total: 42.50 USD 中文 and more after"
    ids = tok.encode(text)
    stop = "42.50 USD 中"
    assert len(tok.encode(stop)) > 4
    det, deltas = stream(tok, ids, stop=("zzz", stop))
    assert "".join(deltas) == det.text == "Total: "
    assert det.stopped and det.stop_string == stop
    assert not any(c in d for d in deltas for c in "4.5USD中")  # no part of the stop string ever went out
    assert det.add(tok.encode("x")[0]) == ""  # nothing after a stop


def test_stop_prefix_is_held_back_then_flushed(tok):
    ids = tok.encode("Count the stars: ###")
    det = IncrementalDetokenizer(tok, stop=("####",))
    deltas = [det.add(i) for i in ids]
    assert "".join(deltas) == det.text == "Count the stars: "  # "###" might still become "####"
    last = det.finish()
    assert last == "###" and det.text == "Count the stars: ###" and not det.stopped
    assert det.finish() == ""


def test_stop_found_in_the_final_flush_and_earliest_stop_wins(tok):
    ids = tok.encode("say 中文 now")
    det, _ = stream(tok, ids, stop=("now", "中"))
    assert det.text == "say " and det.stop_string == "中"
    det, deltas = stream(tok, tok.encode("ends with é"), stop=("é",))
    assert "".join(deltas) == "ends with " and det.stopped


def test_stop_on_text_of_special_token_only_when_kept(tok):
    ids = tok.encode("done") + [tok.im_end_id] + tok.encode(" tail")
    det, _ = stream(tok, ids, stop=("<|im_end|>",))
    assert det.text == "done tail" and not det.stopped
    det, _ = stream(tok, ids, stop=("<|im_end|>",), skip_special_tokens=False)
    assert det.text == "done" and det.stop_string == "<|im_end|>"


def test_random_stop_strings_cut_at_first_occurrence(tok):
    rng = random.Random(1)
    base = tok.encode("Héllo 中文 🙂 world café the quick brown fox 123 ### 中文 again")
    for _ in range(200):
        a = rng.randrange(len(base))
        ids = base[a:a + rng.randrange(1, 40)]
        full = tok.decode(ids, skip_special_tokens=True)
        if not full:
            continue
        i = rng.randrange(len(full))
        stop = (full[i:i + rng.randrange(1, 6)], "zq")
        det, deltas = stream(tok, ids, stop=stop)
        cut = full.find(stop[0])
        assert "".join(deltas) == det.text == full[:cut]
        assert det.stopped and det.stop_string == stop[0]


def test_long_sequence_streams(tok):
    ids = (tok.encode("Héllo 中文 🙂 world café. ") * 200)[:2000]
    det, deltas = stream(tok, ids, stop=("never there",))
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
    assert det._read - det._prefix < 20  # only a small window is decoded per token


def test_bad_stop_strings_rejected(tok):
    with pytest.raises(ValueError, match="stop"):
        IncrementalDetokenizer(tok, stop=("",))


def test_add_after_finish_is_an_error(tok):
    det = IncrementalDetokenizer(tok)
    assert det.add(tok.encode("a")[0]) + det.finish() == "a"
    with pytest.raises(RuntimeError):
        det.add(tok.encode("b")[0])
