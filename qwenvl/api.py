"""The Python entry point: `qwenvl.load(path)` -> `VLM` holding config, tokenizer, processor and model."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from .batch import Batch
from .config import QwenVLConfig
from .processor import Processor
from .tokenizer import Tokenizer
from .weights import load_model, parse_dtype, save_model

log = logging.getLogger(__name__)


class VLM:
    """A loaded Qwen2.5-VL: `.config`, `.tokenizer`, `.processor`, `.model`, `.forward(batch)`."""

    def __init__(self, model, tokenizer: Tokenizer, config: QwenVLConfig, path: Path | None = None, processor=None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.processor = processor
        self.generation_config = _read_generation_config(path)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, T, V) of a prompt batch."""
        b = batch.to(self.device)
        return self.model(**b.model_inputs())

    # ------------------------------------------------------------------ generation
    def _prepare(self, messages, options: dict):
        from .sampling import SamplingParams

        proc_keys = {"min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels", "fps", "nframes", "min_frames",
                     "max_frames", "total_pixels", "video_start", "video_end", "add_vision_id", "truncation",
                     "max_length", "video_fit", "add_generation_prompt"}
        proc_opts = {k: options.pop(k) for k in list(options) if k in proc_keys and options[k] is not None}
        params = SamplingParams.from_options(self.generation_defaults, **options)
        params.validate()
        batch = self.processor(messages, **proc_opts)
        return batch, [params] * batch.batch_size

    def generate(self, messages, **options):
        """Answer one conversation (-> Generation) or a list of conversations (-> list[Generation]).

        Options: max_new_tokens, min_new_tokens, temperature (0 = greedy), top_p, top_k, min_p,
        repetition_penalty, presence_penalty, frequency_penalty, seed, stop, stop_token_ids; processor options
        (min_pixels, max_pixels, fps, nframes, ...). Defaults come from generation_config.json."""
        from .generate import generate
        from .messages import is_batch

        batch, params = self._prepare(messages, dict(options))
        out = generate(self.model, self.tokenizer, batch, params, self.stop_ids)
        return out if is_batch(messages) else out[0]

    def events(self, messages, **options):
        """Low-level stream: one TokenEvent per generated token (row, token_id, text delta, final Generation)."""
        from .generate import run

        batch, params = self._prepare(messages, dict(options))
        return run(self.model, self.tokenizer, batch, params, self.stop_ids)

    def stream(self, messages, **options):
        """Yield the text deltas of the answer to one conversation; the generator returns the final Generation
        (as StopIteration.value)."""
        from .messages import is_batch

        if is_batch(messages):
            raise ValueError("stream() takes one conversation; use generate() for a list of conversations")
        for ev in self.events(messages, **options):
            if ev.delta:
                yield ev.delta
            if ev.finished is not None:
                return ev.finished

    @property
    def stop_ids(self) -> set[int]:
        eos = self.generation_config.get("eos_token_id")
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids or {self.tokenizer.im_end_id, self.tokenizer.special_ids["<|endoftext|>"]}

    @property
    def generation_defaults(self) -> dict:
        g = self.generation_config
        return {k: g[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample", "max_new_tokens")
                if k in g}

    def save(self, path: str | os.PathLike) -> None:
        """Write an HF directory (original layout) with the tokenizer/processor files copied alongside."""
        path = Path(path)
        save_model(self.model, path)  # packed linears are written back as their plain HF weights
        if self.path is not None and self.path.resolve() != path.resolve():
            import shutil
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                         "added_tokens.json", "preprocessor_config.json", "video_preprocessor_config.json",
                         "chat_template.json", "chat_template.jinja", "generation_config.json"):
                if (self.path / name).is_file():
                    shutil.copy2(self.path / name, path / name)


def load(path: str | os.PathLike | None = None, *, dtype=None, device=None, pack: bool | None = None) -> VLM:
    """Load a Qwen2.5-VL checkpoint directory (HF layout); no path = the embedded default model. `dtype`
    defaults to the checkpoint's `torch_dtype`
    (float32 on a CPU without native bf16). `pack` pre-packs the linear weights for oneDNN (inference only; default:
    on wherever the CPU supports it, see `qwenvl.model.packed`)."""
    if path is None:  # the embedded default model (qwenvl/embedded)
        from . import embedded
        path = embedded.path()
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist; pass a Qwen2.5-VL checkpoint directory")
    t0 = time.perf_counter()
    config = QwenVLConfig.from_file(path)
    tokenizer = Tokenizer.from_dir(path)
    _check_token_ids(config, tokenizer, path)
    processor = Processor.from_dir(path, tokenizer, config)
    model = load_model(path, config, dtype=parse_dtype(dtype), device=device)
    _maybe_pack(model, pack)
    vlm = VLM(model, tokenizer, config, path, processor)
    log.info("ready in %.1f s", time.perf_counter() - t0)
    return vlm


def _maybe_pack(model, pack: bool | None) -> None:
    from .model.packed import pack_model, packing_supported

    ok = packing_supported(model.dtype, model.device)
    if pack and not ok:
        raise ValueError(f"pack=True needs a CPU model whose dtype oneDNN can pack on this machine; this one is "
                         f"{model.dtype} on {model.device}. Pass pack=False (or None for automatic)")
    if pack is None:
        pack = ok
    if pack:
        t0 = time.perf_counter()
        n = pack_model(model)
        log.info("packed %d linear products for oneDNN in %.1f s", n, time.perf_counter() - t0)


def _read_generation_config(path: Path | None) -> dict:
    import json
    f = None if path is None else path / "generation_config.json"
    if f is None or not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f} is not valid JSON ({e})") from None


def _check_token_ids(config: QwenVLConfig, tok: Tokenizer, path: Path) -> None:
    pairs = (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
             ("vision_start_token_id", "<|vision_start|>"))
    bad = [f"{k}={getattr(config, k)} but tokenizer {t}={tok.special_ids[t]}" for k, t in pairs
           if getattr(config, k) != tok.special_ids[t]]
    if bad:
        raise ValueError(f"config.json and tokenizer.json in {path} disagree: {'; '.join(bad)}")
