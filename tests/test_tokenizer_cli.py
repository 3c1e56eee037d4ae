"""Tokenizer special ids come from the files; the demo CLI runs as a subprocess and fails cleanly."""
import json
import subprocess
import sys

import pytest

from qwenvl.tiny import build_tokenizer, write_tokenizer
from qwenvl.tokenizer import Tokenizer, TokenizerError


def test_special_ids_are_read_from_files(tmp_path):
    tok = build_tokenizer()
    write_tokenizer(tok, tmp_path)
    t = Tokenizer.from_dir(tmp_path)
    assert t.special_ids["<|image_pad|>"] == tok.token_to_id("<|image_pad|>")
    assert t.im_end_id == tok.token_to_id("<|im_end|>") == t.eos_id
    assert t.pad_id == tok.token_to_id("<|endoftext|>")
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi 2026!<|im_end|>"
    ids = t.encode(text)
    assert ids[0] == t.im_start_id and t.special_ids["<|image_pad|>"] in ids
    assert t.decode(ids) == text
    assert t.decode(ids, skip_special_tokens=True) == "user\nHi 2026!"
    # digits are split one by one
    assert len(t.encode("2026")) == 4


def test_tokenizer_without_qwen_tokens_is_rejected(tmp_path):
    from tokenizers import Tokenizer as T, models
    T(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="lacks Qwen special tokens"):
        Tokenizer.from_dir(tmp_path)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_config_and_tokenizer_disagreeing_ids(ref_dir, tmp_path):
    import shutil

    import qwenvl
    path, _, _ = ref_dir
    bad = tmp_path / "ids"
    shutil.copytree(path, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["image_token_id"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="disagree: image_token_id"):
        qwenvl.load(bad)


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qwenvl", "demo", "-m", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"qwenvl: error: model directory {tmp_path / 'missing'} does not exist; "
                                             "pass a Qwen2.5-VL checkpoint directory"]
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "qwenvl", "demo", "--max-new-tokens", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid int value" in r.stderr
