"""The package never imports the oracle, qwen-vl-utils, torchvision or decord."""
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "qwenvl"
FORBIDDEN = re.compile(r"^\s*(import|from)\s+(transformers|qwen_vl_utils|torchvision|decord)\b", re.M)


def test_no_forbidden_imports_in_source():
    hits = [f"{p.name}: {m.group(0).strip()}" for p in PKG.rglob("*.py") for m in FORBIDDEN.finditer(p.read_text())]
    assert hits == []


def test_loading_and_running_does_not_pull_in_forbidden_modules(tmp_path):
    code = f"""
import sys, torch, qwenvl
from qwenvl.tiny import make_random_checkpoint
make_random_checkpoint({str(tmp_path)!r})
vlm = qwenvl.load({str(tmp_path)!r})
vlm.forward(qwenvl.Batch(input_ids=torch.tensor([[1, 2, 3]])))
bad = [m for m in ("transformers", "torchvision", "decord", "qwen_vl_utils") if m in sys.modules]
print(bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
