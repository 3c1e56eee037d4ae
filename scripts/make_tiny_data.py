"""Regenerate the small bundled training samples under configs/data/ (used by configs/tiny-*.yaml).

    .venv/bin/python scripts/make_tiny_data.py

SFT: grounding / counting / text-reading records from qwenvl.synth at small sizes, in the messages format
(tiny-sft.jsonl) plus a few in the qwen-vl-finetune / LLaVA format (tiny-sft-llava.jsonl), and a held-out file.
DPO: the same prompts with the correct answer as `chosen` and a corrupted one (wrong count, shifted box) as
`rejected`."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from qwenvl.synth.build import build_dataset

OUT = Path(__file__).resolve().parent.parent / "configs" / "data"
SMALL = dict(curriculum=0, min_pixels=56 * 56, max_pixels=224 * 224)
TASKS = {"detect": 6, "count": 6, "point": 4, "read_text": 4}


def _corrupt(answer: str, k: int) -> str:
    """A plausible wrong answer: every number shifted (boxes move, counts change), or the words reversed."""
    def shift(m: re.Match) -> str:
        n = int(m.group())
        return str(n + 37 + k if n > 9 else n + 1)
    out = re.sub(r"(?<![A-Za-z_])\d+", shift, answer)  # numbers, not the 2 of "bbox_2d"
    if out == answer:  # no numbers (plain text): the words in reverse order
        out = " ".join(reversed(answer.split()))
    return out if out != answer else answer + " " + answer


def _llava(rec: dict) -> dict:
    user, asst = rec["messages"]
    image = next(c["image"] for c in user["content"] if c["type"] == "image")
    text = "".join(c["text"] for c in user["content"] if c["type"] == "text")
    return {"image": image, "conversations": [{"from": "human", "value": "<image>\n" + text},
                                              {"from": "gpt", "value": asst["content"]}]}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    train = build_dataset(OUT, n_per_task=TASKS, split="train", seed=7, file_name="tiny-sft", **SMALL)
    build_dataset(OUT, n_per_task={t: 2 for t in TASKS}, split="heldout", seed=7, file_name="tiny-heldout", **SMALL)
    for rec in train:  # keep the files small: no generator metadata
        rec.pop("meta", None)
    (OUT / "tiny-sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[4:]))
    (OUT / "tiny-sft-llava.jsonl").write_text("".join(json.dumps(_llava(r)) + "\n" for r in train[:4]))
    pairs = []
    for k, rec in enumerate(train):
        user, asst = rec["messages"]
        pairs.append({"prompt": [user], "chosen": asst["content"], "rejected": _corrupt(asst["content"], k)})
    (OUT / "tiny-dpo.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[4:]))
    (OUT / "tiny-dpo-heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:4]))
    held = [json.loads(x) for x in (OUT / "tiny-heldout.jsonl").read_text().splitlines()]
    (OUT / "tiny-heldout.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in held))


if __name__ == "__main__":
    main()
