"""Training configuration: one dataclass, YAML in and out, and the report's stages as presets.

Stages (seed §2.2.2 Table 2, §2.3): `vision` (ViT + merger only, the visual pre-training stage), `all`
(multimodal pre-training: everything), `long_context` (everything at 32,768 tokens), `sft` (ViT frozen; merger +
LLM, ChatML), `dpo` (ViT frozen, sigmoid DPO). A preset sets defaults; keys in the file or on the command line win.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

TINY_RANDOM = "tiny-random"  # `model: tiny-random` = a fresh random toy model (qwenvl.tiny) written to out_dir/init

PRESETS: dict[str, dict] = {
    "vision": dict(tune_vision=True, tune_merger=True, tune_llm=False, pack_length=8192, lr=2e-4),
    "all": dict(tune_vision=True, tune_merger=True, tune_llm=True, pack_length=8192, lr=1e-4),
    "long_context": dict(tune_vision=True, tune_merger=True, tune_llm=True, pack_length=32768, lr=5e-5,
                         activation_checkpointing=True),
    "sft": dict(tune_vision=False, tune_merger=True, tune_llm=True, pack_length=8192, lr=1e-5),
    "dpo": dict(tune_vision=False, tune_merger=True, tune_llm=True, pack_length=8192, lr=5e-7, objective="dpo"),
}


@dataclass
class TrainConfig:
    # what to train
    model: str = ""  # checkpoint directory (HF layout) to start from, or "tiny-random"
    data: list[str] = field(default_factory=list)  # JSONL / JSON files (messages or qwen-vl-finetune format)
    out_dir: str = "runs/train"
    stage: str = "sft"
    objective: str = "sft"  # sft | dpo
    tune_vision: bool = False
    tune_merger: bool = True
    tune_llm: bool = True
    # optimisation
    lr: float = 1e-5
    vision_lr: float | None = None  # per-module learning rates (None = lr)
    merger_lr: float | None = None
    llm_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_steps: int = 0  # 0 = epochs decide
    time_budget_min: float = 0.0  # > 0: fit the run (and its cosine schedule) into this many minutes
    epochs: float = 1.0
    grad_accum: int = 1  # packed sequences per optimizer step and process
    max_grad_norm: float = 1.0
    # data
    pack_length: int = 8192
    pack_by_length: bool = False  # pack same-length samples together (tightest bins) instead of a random mix per bin
    min_pixels: int | None = None
    max_pixels: int | None = None
    fps: float | None = None
    on_error: str = "raise"  # raise | skip bad records
    num_workers: int = 0  # processes preparing packed batches ahead of the step (0 = in the training process)
    # periodic evaluation on held-out files (same formats as `data`)
    eval_data: list[str] = field(default_factory=list)
    eval_every: int = 0  # steps; 0 = only at the end (when eval_data is set)
    eval_max_samples: int = 0  # 0 = every held-out record
    eval_media_gap: bool = False  # SFT: also the held-out loss with blank pictures/videos (does the model use them?)
    # numerics and memory
    dtype: str = "float32"  # parameter dtype
    autocast: str = "auto"  # auto | bfloat16 | off (auto: bf16 where the hardware runs it natively)
    activation_checkpointing: bool = False
    device: str = "auto"
    # dpo
    beta: float = 0.1
    label_smoothing: float = 0.0
    # bookkeeping
    seed: int = 0
    log_every: int = 10  # steps between log lines (metrics.jsonl gets every step)
    save_every: int = 0  # steps; 0 = only at the end
    keep: int = 2
    export: bool = True  # write an HF directory at the end (out_dir/export)

    def validate(self) -> None:
        if self.stage not in PRESETS:
            raise ValueError(f"stage must be one of {sorted(PRESETS)}, got {self.stage!r}")
        if self.objective not in ("sft", "dpo"):
            raise ValueError(f"objective must be 'sft' or 'dpo', got {self.objective!r}")
        if not (self.tune_vision or self.tune_merger or self.tune_llm):
            raise ValueError("nothing to train: set at least one of tune_vision, tune_merger, tune_llm")
        for k in ("num_workers", "eval_every", "eval_max_samples", "max_steps", "save_every"):
            if int(getattr(self, k)) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("grad_accum", "pack_length", "log_every", "keep"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.time_budget_min < 0:
            raise ValueError(f"time_budget_min must be >= 0, got {self.time_budget_min}")
        if self.lr <= 0 or self.max_grad_norm < 0:
            raise ValueError("lr must be > 0 and max_grad_norm >= 0")
        if self.autocast not in ("auto", "bfloat16", "off"):
            raise ValueError(f"autocast must be auto, bfloat16 or off, got {self.autocast!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        d = dict(d)
        stage = d.get("stage", cls.stage)
        if stage not in PRESETS:
            raise ValueError(f"{where}: stage must be one of {sorted(PRESETS)}, got {stage!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
        vals = {**PRESETS[stage], **d}
        types = {f.name: str(f.type) for f in fields(cls)}
        vals = {k: _coerce(k, v, types[k], where) for k, v in vals.items()}
        for k in ("data", "eval_data"):
            if isinstance(vals.get(k), str):
                vals[k] = [vals[k]]
        if "betas" in vals:
            vals["betas"] = tuple(vals["betas"])
        cfg = cls(**vals)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        """YAML (or JSON) file; `overrides` like ["lr=1e-4", "max_steps=10"] (values parsed as YAML)."""
        try:
            import yaml
        except ImportError:
            raise ValueError("reading a training config needs PyYAML: pip install 'qwenvl[train]'") from None

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: the config must be a mapping of keys to values")
        base = path.parent
        for o in overrides or []:
            if "=" not in o:
                raise ValueError(f"override {o!r} must look like key=value")
            k, v = o.split("=", 1)
            d[k.strip()] = yaml.safe_load(v)
        for k in ("model", "out_dir"):  # relative paths are relative to the config file
            if k == "model" and d.get(k) == TINY_RANDOM:
                continue
            if isinstance(d.get(k), str) and d[k] and not Path(d[k]).is_absolute():
                d[k] = str(base / d[k])
        for k in ("data", "eval_data"):
            if isinstance(d.get(k), (str, list)):
                items = [d[k]] if isinstance(d[k], str) else d[k]
                d[k] = [str(base / p) if not Path(str(p)).is_absolute() else p for p in items]
        return cls.from_dict(d, where=str(path))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


_BOOL = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _coerce(key: str, value, typ: str, where: str):
    """Values from YAML or the command line to the field's type ("3e-3" is a string to YAML 1.1, not a float)."""
    if value is None and "None" in typ:
        return None
    base = typ.replace(" | None", "")
    try:
        if base == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if base == "int" and isinstance(value, str):
            return int(value)
        if base == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if base == "bool" and isinstance(value, str):
            return _BOOL[value.strip().lower()]
        if base == "str" and isinstance(value, bool):  # YAML 1.1 reads a bare `off` / `on` as a boolean
            return "on" if value else "off"
    except (ValueError, KeyError):
        raise ValueError(f"{where}: {key} must be {base}, got {value!r}") from None
    ok = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}.get(base)
    if ok and (not isinstance(value, ok) or (base in ("int", "float") and isinstance(value, bool))):
        raise ValueError(f"{where}: {key} must be {base}, got {value!r}")
    return value
