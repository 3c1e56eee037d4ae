"""Load and save HF checkpoint directories (reference.md §2, style-and-ecosystem.md B.4).

Loading is strict and tensor by tensor (each read straight into its own buffer) onto a model built on the meta
device, so peak memory stays near the size of the weights. Both key layouts are read (original `visual.*`/`model.*`, and `model.visual.*`/
`model.language_model.*` from transformers >= 4.52); saving writes the original layout, sharded with an index.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import QwenVLConfig
from .model.qwenvl import QwenVL

log = logging.getLogger(__name__)

# (prefix in the file, prefix in our module tree): first match wins; one auditable table.
PREFIX_RULES: tuple[tuple[str, str], ...] = (
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),  # vLLM-style / bare-model saves
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", "model."),
    ("visual.", "visual."),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
)


class CheckpointError(ValueError):
    """The weights in a directory do not fit the model its config describes."""


def canonical_key(key: str) -> str:
    for src, dst in PREFIX_RULES:
        if key.startswith(src):
            return dst + key[len(src):]
    return key


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if name not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of bfloat16, float16, float32 (or a torch.dtype)")
    return table[name]


def shard_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, checked to exist."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not (path / f).is_file()]
        if absent:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing shard file(s) {', '.join(absent)} "
                                  "listed in model.safetensors.index.json; download them again")
        return [path / f for f in files]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    raise CheckpointError(f"no weights in {path}: expected model.safetensors or model-*.safetensors with "
                          "model.safetensors.index.json (.bin checkpoints are not supported; convert to safetensors)")


def _progress(iterable, total, desc):
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
            return tqdm(iterable, total=total, desc=desc, leave=False)
        except ImportError:  # tqdm is a dependency, but never fail a load over a progress bar
            pass
    return iterable


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class SafetensorsReader:
    """Reads one tensor at a time straight into its own buffer (no mmap of the whole file), so loading keeps
    resident memory near the size of the weights. Format: u64 header length, JSON header, raw little-endian data."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "rb")
        try:
            n = int.from_bytes(self.f.read(8), "little")
            if not 2 <= n <= 100 * 1024**2:
                raise ValueError("bad header length")
            header = json.loads(self.f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            self.f.close()
            raise CheckpointError(f"{path} is not a valid safetensors file ({e}); download it again") from None
        self.base = 8 + n
        self._scratch: torch.Tensor | None = None
        header.pop("__metadata__", None)
        self.header = header

    def keys(self):
        return self.header.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def get(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key`, converted to `dtype` if given. A conversion reads through one reused scratch buffer,
        so no per-tensor temporaries fragment the heap."""
        info = self.header[key]
        file_dtype = _ST_DTYPES.get(info["dtype"])
        if file_dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        n = end - start
        convert = dtype is not None and dtype != file_dtype
        if convert:
            if self._scratch is None or self._scratch.numel() < n:
                self._scratch = torch.empty(n, dtype=torch.uint8)
            buf = self._scratch[:n]
        else:
            buf = torch.empty(n, dtype=torch.uint8)
        self.f.seek(self.base + start)
        if n and self.f.readinto(memoryview(buf.numpy())) != n:
            raise CheckpointError(f"{self.path} is truncated (tensor {key}); download it again")
        t = buf.view(file_dtype).reshape(info["shape"])
        return t.to(dtype) if convert else t

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@contextmanager
def _skip_init():
    """Random init is wasted on meta tensors that weights replace (and its first call costs seconds of imports)."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "ones_", "zeros_", "constant_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda t, *a, **k: t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    mod._parameters[attr] = nn.Parameter(tensor, requires_grad=False)


def load_model(path: str | os.PathLike, config: QwenVLConfig | None = None, *, dtype=None, device=None) -> QwenVL:
    """Build the model on the meta device and fill it from the directory's safetensors, strictly."""
    path = Path(path)
    config = config or QwenVLConfig.from_file(path)
    from .device import auto_dtype, default_device

    device = torch.device(device) if device is not None else default_device()
    dtype = parse_dtype(dtype) or auto_dtype(device, parse_dtype(config.torch_dtype))
    t0 = time.perf_counter()
    with torch.device("meta"), _skip_init():
        model = QwenVL(config)
    expected = {k: p.shape for k, p in model.named_parameters(remove_duplicate=False)}
    tied = config.tie_word_embeddings
    seen: set[str] = set()
    unexpected, wrong_shape = [], []
    files = shard_files(path)
    for f in _progress(files, len(files), "Loading checkpoint shards"):
        with SafetensorsReader(f) as sf:
            for key in sf.keys():
                name = canonical_key(key)
                if tied and name == "lm_head.weight":
                    continue  # tied to embed_tokens; the copy in the file is ignored as the reference does
                if name not in expected:
                    unexpected.append(key)
                    continue
                shape = sf.shape(key)
                if shape != tuple(expected[name]):
                    wrong_shape.append(f"{key}: file {list(shape)} vs model {list(expected[name])}")
                    continue
                _set_tensor(model, name, sf.get(key, dtype).to(device))
                seen.add(name)
    missing = [k for k in expected if k not in seen and not (tied and k == "lm_head.weight")]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_short(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong shape {len(wrong_shape)}: {_short(wrong_shape)}")
        raise CheckpointError(f"weights in {path} do not match its config.json ({'; '.join(parts)}). "
                              "Check that the directory holds one complete Qwen2.5-VL checkpoint.")
    model.tie_weights()
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    log.info("loaded %s: %.2fM parameters, %s, %s, %.1f s", path, n / 1e6, str(dtype).removeprefix("torch."),
             device, time.perf_counter() - t0)
    return model


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def save_model(model: QwenVL, path: str | os.PathLike, *, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write config.json and safetensors in the original HF layout (sharded with an index when large)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hf()
    cfg["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    from .model.packed import dense_state_dict

    state = {k: v.detach().contiguous().cpu() for k, v in dense_state_dict(model).items()
             if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    for old in list(path.glob("model*.safetensors")) + [path / "model.safetensors.index.json"]:
        if old.exists():
            old.unlink()
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata=meta)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata=meta)
        for k, v in shard.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
