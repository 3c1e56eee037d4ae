"""Loading keeps peak resident memory near the size of the weights (meta-device build, one tensor at a time)."""
import json
import subprocess
import sys

from qwenvl.tiny import build_tokenizer, tiny_config, write_tokenizer

MEASURE = """
import resource, sys, torch, qwenvl
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vlm = qwenvl.load(sys.argv[1], dtype=sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""

MAKE = """
import sys, torch
from qwenvl.config import QwenVLConfig
from qwenvl.model.qwenvl import QwenVL
from qwenvl.weights import save_model
import json
cfg = QwenVLConfig.from_file(sys.argv[1])
with torch.device("meta"):
    m = QwenVL(cfg)
m = m.to_empty(device="cpu")
for p in m.parameters():
    torch.nn.init.normal_(p, std=0.02)
save_model(m.to(torch.bfloat16), sys.argv[1], max_shard_bytes=60 * 2**20)
"""


def test_peak_rss_close_to_weight_bytes(tmp_path):
    tok = build_tokenizer()
    write_tokenizer(tok, tmp_path)
    cfg = tiny_config(tok, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
    cfg["vision_config"]["out_hidden_size"] = 1024
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-c", MAKE, str(tmp_path)], check=True, timeout=600)
    file_bytes = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert file_bytes > 150e6
    for dtype, factor in (("bfloat16", 1), ("float32", 2)):
        out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path), dtype], check=True, capture_output=True,
                             text=True, timeout=600)
        peak = int(out.stdout.strip())
        weights = file_bytes * factor
        assert peak <= 1.15 * weights + 40e6, (dtype, peak / 1e6, weights / 1e6)
