"""The embedded default model: a ~10M-parameter Qwen2.5-VL (same architecture, bf16 weights) trained from scratch
on the synthetic tasks of `qwenvl.synth` with our own trainer (docs/embedded-model.md), shipped inside the package
so that `qwenvl.load()` and the command line work on a machine with no other weights.

    import qwenvl
    vlm = qwenvl.load()                       # this model
    qwenvl.embedded.EXAMPLE                   # a bundled example image (shapes on a background)
"""
from __future__ import annotations

import json
from pathlib import Path

DIR = Path(__file__).resolve().parent
EXAMPLE = DIR / "example.png"
EXAMPLE_TRUTH = DIR / "example.json"  # the example's objects: [{"label", "box": [x1, y1, x2, y2]}] in its pixels


def path() -> Path:
    """The checkpoint directory; a clear error when the weights are missing (e.g. a partial install)."""
    if not (DIR / "model.safetensors").is_file() or not (DIR / "config.json").is_file():
        raise FileNotFoundError(f"the embedded default model is missing from {DIR} (a partial install?); reinstall "
                                "qwenvl, or pass the path of a Qwen2.5-VL checkpoint directory")
    return DIR


def example_truth() -> list[dict]:
    return json.loads(EXAMPLE_TRUTH.read_text())["objects"]
