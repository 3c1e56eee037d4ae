"""Worker of bench/generate.py for the reference: transformers 5.x in bench/.venv-ref (no qwenvl import here).

  --ckpt D --inputs F --dtype T --out J   the measurement protocol of bench/generate.py on the reference model

The model is fed tensors built by bench/generate.py (the 5.x image processor needs torchvision, which does not
work here). `mm_token_type_ids` (0 text, 1 image) is passed to generate(): 5.x computes MRoPE positions only
when it is given, and otherwise silently falls back to 1D positions (reference.md §6.6, §8.2, §9.3 item 11).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate as bench  # noqa: E402  (bench/generate.py: the shared protocol, stdlib-only at import)


class Reference:
    def __init__(self, ckpt, dtype):
        import transformers
        from transformers import Qwen2_5_VLForConditionalGeneration

        transformers.logging.set_verbosity_error()
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
        self.model.eval()
        # exactly the requested number of tokens, like ours with stop_ids=set(): no eos stop
        self.model.generation_config.eos_token_id = None
        self.dtype = dtype
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        self.weight_bytes = total
        self.versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                         "attn_implementation": self.model.config._attn_implementation}
        tied = self.model.lm_head.weight.data_ptr() == self.model.get_input_embeddings().weight.data_ptr()
        self.versions["lm_head_tied"] = tied

    def vision(self, pixel_values, grid_thw):
        with torch.inference_mode():
            out = self.model.model.visual(pixel_values.to(self.dtype), grid_thw=grid_thw)
        return out.pooler_output

    def generate(self, inp, n):
        kw = dict(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                  mm_token_type_ids=inp["mm_token_type_ids"])
        if inp.get("pixel_values") is not None:
            kw.update(pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
        with torch.inference_mode():
            seq = self.model.generate(**kw, max_new_tokens=n, min_new_tokens=0, do_sample=False)
        T = inp["input_ids"].shape[1]
        return seq[:, T:].tolist()


if __name__ == "__main__":
    bench.run_worker("reference", Reference)
