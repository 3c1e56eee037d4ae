"""Model configuration: frozen dataclasses for the vision tower, the language model and the whole model.

Built from an HF ``config.json`` in either layout (flat original release, or nested ``text_config``;
``rope_scaling`` or ``rope_parameters``). Unknown keys are ignored, missing required keys raise.
Runtime knobs (dtype, device, batch size, cache length) never live here.
See ../shared/spec/reference.md §1.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

MODEL_TYPE = "qwen2_5_vl"


class ConfigError(ValueError):
    """A config.json that cannot describe a Qwen2.5-VL model."""


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    window_size: int
    tokens_per_second: float
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:  # values per pixel_values row: C*T*p*p (1176 for the real model)
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class QwenVLConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int | None = None
    tie_word_embeddings: bool = False
    torch_dtype: str | None = None
    # "absolute" (Qwen2.5-VL: a video's temporal ids follow seconds) or "frame_index" (the Qwen2-VL ablation,
    # issue 7's claim test); stored as `qwenvl_time_positions` in config.json only when not absolute
    time_positions: str = "absolute"
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # unknown keys, written back on save

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "QwenVLConfig":
        """Build from a parsed HF config.json (flat or nested layout)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"config must be a JSON object, got {type(cfg).__name__}")
        mt = cfg.get("model_type")
        if mt != MODEL_TYPE:
            raise ConfigError(
                f"config.json has model_type={mt!r}; qwenvl loads Qwen2.5-VL checkpoints (model_type "
                f"'{MODEL_TYPE}'). Point it at a Qwen2.5-VL-*-Instruct directory."
            )
        text = dict(cfg.get("text_config") or {})
        # flat layout: text keys at top level; nested: top level may still carry some (token ids, tie)
        for k, v in cfg.items():
            if k not in ("text_config", "vision_config"):
                text.setdefault(k, v)
        vis = cfg.get("vision_config")
        if not isinstance(vis, dict):
            raise ConfigError("config.json lacks a 'vision_config' object; this is not a Qwen2.5-VL config")

        rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
        missing: list[str] = []

        def need(d: dict, key: str, where: str, alt: str | None = None):
            if key in d and d[key] is not None:
                return d[key]
            if alt is not None and alt in d and d[alt] is not None:
                return d[alt]
            missing.append(f"{where}{key}")
            return None

        rope_theta = text.get("rope_theta", rope.get("rope_theta"))
        if rope_theta is None:
            missing.append("rope_theta")
        mrope = rope.get("mrope_section")
        if mrope is None:
            if "rope_parameters" in text:
                mrope = [16, 24, 24]  # 5.x default when rope_parameters omits it
            else:
                missing.append("rope_scaling.mrope_section")
        tc = dict(
            vocab_size=need(text, "vocab_size", ""),
            hidden_size=need(text, "hidden_size", ""),
            intermediate_size=need(text, "intermediate_size", ""),
            num_hidden_layers=need(text, "num_hidden_layers", ""),
            num_attention_heads=need(text, "num_attention_heads", ""),
            num_key_value_heads=text.get("num_key_value_heads") or text.get("num_attention_heads"),
            rms_norm_eps=need(text, "rms_norm_eps", ""),
            rope_theta=rope_theta,
            mrope_section=tuple(mrope) if mrope is not None else None,
            max_position_embeddings=text.get("max_position_embeddings", 128000),
            hidden_act=text.get("hidden_act", "silu"),
        )
        vc = dict(
            depth=need(vis, "depth", "vision_config."),
            hidden_size=need(vis, "hidden_size", "vision_config."),
            intermediate_size=need(vis, "intermediate_size", "vision_config."),
            num_heads=need(vis, "num_heads", "vision_config."),
            out_hidden_size=need(vis, "out_hidden_size", "vision_config."),
            fullatt_block_indexes=need(vis, "fullatt_block_indexes", "vision_config."),
            window_size=need(vis, "window_size", "vision_config."),
            tokens_per_second=need(vis, "tokens_per_second", "vision_config."),
            patch_size=vis.get("patch_size", vis.get("spatial_patch_size", 14)),
            temporal_patch_size=vis.get("temporal_patch_size", 2),
            spatial_merge_size=vis.get("spatial_merge_size", 2),
            in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
            hidden_act=vis.get("hidden_act", "silu"),
        )
        ids = dict(
            image_token_id=need(text, "image_token_id", ""),
            video_token_id=need(text, "video_token_id", ""),
            vision_start_token_id=need(text, "vision_start_token_id", ""),
        )
        if missing:
            raise ConfigError("config.json is missing required keys: " + ", ".join(missing))
        vc["fullatt_block_indexes"] = tuple(vc["fullatt_block_indexes"])
        known = set(tc) | {"text_config", "vision_config", "rope_scaling", "rope_parameters", "model_type",
                           "tie_word_embeddings", "torch_dtype", "dtype", "vision_end_token_id",
                           "qwenvl_time_positions", *ids}
        config = cls(
            vision=VisionConfig(**vc),
            text=TextConfig(**tc),
            vision_end_token_id=text.get("vision_end_token_id"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype") or text.get("torch_dtype"),
            time_positions=cfg.get("qwenvl_time_positions", "absolute"),
            extra={k: v for k, v in cfg.items() if k not in known},
            **ids,
        )
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "QwenVLConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}: expected a Qwen2.5-VL checkpoint directory")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); re-download or repair the file") from None
        return cls.from_hf(raw)

    def validate(self) -> None:
        v, t = self.vision, self.text
        problems = []
        if v.hidden_size % v.num_heads:
            problems.append(f"vision hidden_size {v.hidden_size} not divisible by num_heads {v.num_heads}")
        if t.hidden_size % t.num_attention_heads:
            problems.append(f"hidden_size {t.hidden_size} not divisible by num_attention_heads {t.num_attention_heads}")
        if t.num_attention_heads % t.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if 2 * sum(t.mrope_section) != t.head_dim:
            problems.append(f"mrope_section {list(t.mrope_section)} must sum to head_dim/2 = {t.head_dim // 2}")
        if v.window_size % (v.patch_size * v.spatial_merge_size):
            problems.append("vision window_size must be a multiple of patch_size*spatial_merge_size")
        if any(not 0 <= i for i in v.fullatt_block_indexes):
            problems.append("fullatt_block_indexes must be non-negative")
        if self.time_positions not in ("absolute", "frame_index"):
            problems.append(f"qwenvl_time_positions must be 'absolute' or 'frame_index', got {self.time_positions!r}")
        if problems:
            raise ConfigError("invalid Qwen2.5-VL config: " + "; ".join(problems))

    # ---------------------------------------------------------------- export
    def to_hf(self) -> dict[str, Any]:
        """The original (flat) HF layout, readable by transformers 4.49+ and vLLM."""
        t, v = self.text, self.vision
        out: dict[str, Any] = dict(self.extra)
        out.update(
            architectures=["Qwen2_5_VLForConditionalGeneration"],
            model_type=MODEL_TYPE,
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            rms_norm_eps=t.rms_norm_eps,
            rope_theta=t.rope_theta,
            rope_scaling={"type": "mrope", "mrope_section": list(t.mrope_section)},
            max_position_embeddings=t.max_position_embeddings,
            hidden_act=t.hidden_act,
            tie_word_embeddings=self.tie_word_embeddings,
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            vision_start_token_id=self.vision_start_token_id,
            vision_config={**asdict(v), "fullatt_block_indexes": list(v.fullatt_block_indexes),
                           "model_type": MODEL_TYPE},
        )
        if self.vision_end_token_id is not None:
            out["vision_end_token_id"] = self.vision_end_token_id
        if self.torch_dtype is not None:
            out["torch_dtype"] = self.torch_dtype
        if self.time_positions != "absolute":
            out["qwenvl_time_positions"] = self.time_positions
        return out

    def replace(self, **changes) -> "QwenVLConfig":
        return replace(self, **changes)

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (tied lm_head counted once)."""
        v, t = self.vision, self.text
        blk = (2 * v.hidden_size + 3 * v.hidden_size * (v.hidden_size + 1) + v.hidden_size * (v.hidden_size + 1)
               + 2 * v.intermediate_size * (v.hidden_size + 1) + v.hidden_size * (v.intermediate_size + 1))
        m = 4 * v.hidden_size
        vis = v.patch_dim * v.hidden_size + v.depth * blk + v.hidden_size + m * (m + 1) + v.out_hidden_size * (m + 1)
        kv = t.num_key_value_heads * t.head_dim
        layer = (t.hidden_size * (t.hidden_size + 1) + 2 * kv * (t.hidden_size + 1) + t.hidden_size ** 2
                 + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size)
        lm = t.vocab_size * t.hidden_size * (1 if self.tie_word_embeddings else 2) + t.num_hidden_layers * layer + t.hidden_size
        return vis + lm


_SPECIAL_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                    vision_end_token_id=151653)
_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=(7, 15, 23, 31),
               window_size=112, tokens_per_second=2)


def _preset(vocab, hidden, inter, layers, heads, kv, tie) -> QwenVLConfig:
    return QwenVLConfig(
        vision=VisionConfig(out_hidden_size=hidden, **_VISION),
        text=TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv, rms_norm_eps=1e-6, rope_theta=1e6,
                        mrope_section=(16, 24, 24)),
        tie_word_embeddings=tie, torch_dtype="bfloat16", **_SPECIAL_IDS,
    )


# The released shapes (reference.md §1.1). 72B text shape: transformers' class defaults (= Qwen2.5-72B).
PRESETS: dict[str, QwenVLConfig] = {
    "3b": _preset(151936, 2048, 11008, 36, 16, 2, True),
    "7b": _preset(152064, 3584, 18944, 28, 28, 4, False),
    "72b": _preset(152064, 8192, 29568, 80, 64, 8, False),
}


def preset(name: str) -> QwenVLConfig:
    """Named real shapes: '3b', '7b', '72b' (case-insensitive; 'Qwen2.5-VL-7B-Instruct' also works)."""
    key = name.lower().replace("qwen2.5-vl-", "").replace("-instruct", "")
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
