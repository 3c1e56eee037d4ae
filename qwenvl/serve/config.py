"""Server settings (the `qwenvl serve` flags) and the parsing of `--limit-mm-per-prompt`."""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_KINDS = ("image", "video")


def parse_mm_limits(text: str | None, default: int = 5) -> dict[str, int]:
    """'5' (every kind), 'image=5,video=1' or '{"image": 5, "video": 1}' -> {"image": 5, "video": 1}."""
    out = {k: default for k in MEDIA_KINDS}
    if text is None or not str(text).strip():
        return out
    s = str(text).strip()
    try:
        if s.startswith("{"):
            items = json.loads(s).items()
        elif "=" in s:
            items = [kv.split("=", 1) for kv in s.split(",") if kv.strip()]
        else:
            return {k: int(s) for k in MEDIA_KINDS}
        for k, v in items:
            k = str(k).strip()
            if k not in MEDIA_KINDS:
                raise ValueError(f"unknown media kind {k!r}")
            out[k] = int(v)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"--limit-mm-per-prompt {s!r} is not understood ({e}); use N, 'image=5,video=1' or "
                         "'{\"image\": 5, \"video\": 1}'") from None
    if any(v < 0 for v in out.values()):
        raise ValueError("--limit-mm-per-prompt values must be >= 0")
    return out


@dataclass
class ServeConfig:
    """Everything a request is allowed to do, and the scheduler's sizes."""
    model_name: str = "qwenvl"
    api_key: str | None = None
    allowed_local_media_path: Path | None = None  # local files only below this directory
    allow_remote_media: bool = False
    allowed_media_networks: tuple = ()  # ip networks trusted for remote media despite being private
    limit_mm_per_prompt: dict = field(default_factory=lambda: {k: 5 for k in MEDIA_KINDS})
    max_body_bytes: int = 50 * 2**20
    max_image_bytes: int = 20 * 2**20  # remote download caps
    max_video_bytes: int = 200 * 2**20
    image_fetch_timeout: float = 5.0
    video_fetch_timeout: float = 30.0
    max_image_pixels: int = 64_000_000  # decode guard: declared size above this is refused unread
    max_visual_tokens: int = 16384  # per request (all images and videos)
    max_video_frames: int = 768
    max_queue: int = 64  # requests accepted but not yet generating
    max_batch: int = 16  # rows decoded together
    timeout: float = 600.0  # seconds per request, queueing included
    max_tokens_default: int | None = None  # None: generation_config.json, else 256

    def __post_init__(self):
        if self.allowed_local_media_path is not None:
            p = Path(self.allowed_local_media_path).expanduser().resolve()
            if not p.is_dir():
                raise ValueError(f"--allowed-local-media-path {p} is not a directory")
            self.allowed_local_media_path = p
        nets = []
        for n in self.allowed_media_networks:
            try:
                nets.append(n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                            else ipaddress.ip_network(str(n), strict=False))
            except ValueError:
                raise ValueError(f"--allowed-media-network {n!r} is not an IP network like 10.0.0.0/8") from None
        self.allowed_media_networks = tuple(nets)
        for name in ("max_queue", "max_batch", "max_body_bytes", "max_visual_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if not self.timeout > 0:
            raise ValueError("--timeout must be > 0 seconds")
