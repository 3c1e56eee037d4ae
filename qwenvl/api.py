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
        self.processor = processor  # filled in by the inputs layer

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

    def save(self, path: str | os.PathLike) -> None:
        """Write an HF directory (original layout) with the tokenizer/processor files copied alongside."""
        path = Path(path)
        save_model(self.model, path)
        if self.path is not None and self.path.resolve() != path.resolve():
            import shutil
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                         "added_tokens.json", "preprocessor_config.json", "video_preprocessor_config.json",
                         "chat_template.json", "chat_template.jinja", "generation_config.json"):
                if (self.path / name).is_file():
                    shutil.copy2(self.path / name, path / name)


def load(path: str | os.PathLike | None = None, *, dtype=None, device=None) -> VLM:
    """Load a Qwen2.5-VL checkpoint directory (HF layout). `dtype` defaults to the checkpoint's `torch_dtype`."""
    if path is None:
        raise FileNotFoundError("no embedded default model is bundled yet; pass the path of a Qwen2.5-VL checkpoint "
                                "directory, e.g. qwenvl.load('/models/Qwen2.5-VL-3B-Instruct')")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist; pass a Qwen2.5-VL checkpoint directory")
    t0 = time.perf_counter()
    config = QwenVLConfig.from_file(path)
    tokenizer = Tokenizer.from_dir(path)
    _check_token_ids(config, tokenizer, path)
    processor = Processor.from_dir(path, tokenizer, config)
    model = load_model(path, config, dtype=parse_dtype(dtype), device=device)
    vlm = VLM(model, tokenizer, config, path, processor)
    log.info("ready in %.1f s", time.perf_counter() - t0)
    return vlm


def _check_token_ids(config: QwenVLConfig, tok: Tokenizer, path: Path) -> None:
    pairs = (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
             ("vision_start_token_id", "<|vision_start|>"))
    bad = [f"{k}={getattr(config, k)} but tokenizer {t}={tok.special_ids[t]}" for k, t in pairs
           if getattr(config, k) != tok.special_ids[t]]
    if bad:
        raise ValueError(f"config.json and tokenizer.json in {path} disagree: {'; '.join(bad)}")
