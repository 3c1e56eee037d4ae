"""What a request may read: every image and video part is turned into decoded data here, under the server's
rules, before the processor sees it (so the processor never opens a path or a URL on a client's behalf).

- `data:` URLs (`data:image/png;base64,...`, `data:image;base64,...`, `data:video/mp4;base64,...`, and
  `data:video/jpeg;base64,<frame>,<frame>,...` comma-joined frames);
- local files (`file:///abs/path` or a plain path) only below --allowed-local-media-path, after resolving `..`
  and symlinks;
- http(s) only with --allow-remote-media, through `fetch` (public addresses only, timeouts, byte caps);
- images whose declared size exceeds the decode limit are refused before decoding (decompression bombs);
- counts per kind (--limit-mm-per-prompt) and pixel options bounded by the server's caps.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote

from ..media import image as im
from ..media.common import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS, MediaError, smart_resize
from .config import ServeConfig
from .errors import APIError
from .fetch import fetch

_PIXEL_OPTS = ("min_pixels", "max_pixels", "total_pixels")


def _where(loc: str) -> str:
    return f"messages[{loc}]"


class MediaResolver:
    """Resolves the media parts of one request; `cleanup()` removes the temporary files it wrote.

    `image_pixels` = (min_pixels, max_pixels) the processor applies to images without their own options. The
    visual tokens of images and frame lists are estimated from their decoded sizes as they come, so a request over
    the budget is refused before any resizing or patching (a frame list could otherwise be upscaled frame by
    frame); decoded frame-list pixels are capped too."""

    def __init__(self, cfg: ServeConfig, image_pixels: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS)):
        self.cfg = cfg
        self.image_pixels = image_pixels
        self.tokens = 0  # visual tokens estimated so far
        self.tmp: list[str] = []

    def cleanup(self) -> None:
        for p in self.tmp:
            try:
                os.unlink(p)
            except OSError:
                pass
        self.tmp.clear()

    # ------------------------------------------------------------------ conversation
    def resolve(self, conv: list[dict]) -> list[dict]:
        """A normalised conversation (qwenvl.messages) -> the same with decoded media, ready for the processor."""
        counts = {"image": 0, "video": 0}
        out = []
        for i, msg in enumerate(conv):
            content = msg["content"]
            if not isinstance(content, list):
                out.append(msg)
                continue
            parts = []
            for j, p in enumerate(content):
                if p["type"] not in ("image", "video"):
                    parts.append(p)
                    continue
                loc = f"{i}].content[{j}"
                kind = p["type"]
                counts[kind] += 1
                limit = self.cfg.limit_mm_per_prompt.get(kind, 0)
                if counts[kind] > limit:
                    raise APIError(400, f"{_where(loc)}: more than {limit} {kind}(s) in one request (the server's "
                                        f"--limit-mm-per-prompt); send fewer {kind}s per request",
                                   param="messages", code="too_many_media")
                opts = self.options(p, loc)
                value = p.get("value")
                try:
                    if kind == "image":
                        img = self.image(value, loc)
                        self._count(img, 1, opts, self.image_pixels, loc)
                        parts.append({"type": "image", "image": img, **opts})
                    else:
                        video = self.video(value, loc)
                        if isinstance(video, list):
                            self._count(video[0], len(video), opts, (MIN_PIXELS, MAX_PIXELS), loc)
                        parts.append({"type": "video", "video": video, **opts})
                except MediaError as e:
                    raise APIError(400, f"{_where(loc)}: {e}", param="messages", code="invalid_media") from None
            out.append({**msg, "content": parts})
        return out

    def _count(self, img, frames: int, opts: dict, defaults: tuple[int, int], loc: str) -> None:
        """Add the visual tokens of an image (frames=1) or a frame list resized like the processor does."""
        if opts.get("resized_height") and opts.get("resized_width"):
            h, w = smart_resize(int(opts["resized_height"]), int(opts["resized_width"]), IMAGE_FACTOR)
        else:
            h, w = smart_resize(img.height, img.width, IMAGE_FACTOR, int(opts.get("min_pixels", defaults[0])),
                                int(opts.get("max_pixels", defaults[1])))
        self.tokens += (frames + 1) // 2 * h * w // (IMAGE_FACTOR * IMAGE_FACTOR)
        if self.tokens > self.cfg.max_visual_tokens:
            raise APIError(400, f"{_where(loc)}: the images and videos of this request need more than "
                                f"{self.cfg.max_visual_tokens} visual tokens (the server's limit); lower max_pixels / "
                                "fps (mm_processor_kwargs) or send smaller media", param="messages",
                           code="too_many_visual_tokens")

    def options(self, part: dict, loc: str) -> dict:
        """The part's own resize/sampling options, refused when beyond the server's caps."""
        opts = {k: v for k, v in part.items() if k not in ("type", "value")}
        check_media_options(opts, self.cfg, f"{_where(loc)}")
        return opts

    # ------------------------------------------------------------------ sources
    def _bytes(self, value, loc: str, kind: str) -> bytes:
        """The raw bytes of a data URL, a remote URL or an allowed local file."""
        if not isinstance(value, str) or not value.strip():
            raise APIError(400, f"{_where(loc)}: the {kind} needs a URL string (data:, http(s):// or file://)",
                           param="messages", code="invalid_media_url")
        s = value.strip()
        low = s[:16].lower()
        if low.startswith("data:"):
            try:
                return im.read_data_url(s, kind)
            except MediaError as e:
                raise APIError(400, f"{_where(loc)}: {e}", param="messages", code="invalid_base64") from None
        if low.startswith(("http://", "https://")):
            if not self.cfg.allow_remote_media:
                raise APIError(403, f"{_where(loc)}: remote media URLs are disabled on this server; send the {kind} "
                                    "inline as a data: URL, or start the server with --allow-remote-media",
                               param="messages", code="remote_media_disabled")
            image = kind == "image"
            return fetch(s, timeout=self.cfg.image_fetch_timeout if image else self.cfg.video_fetch_timeout,
                         max_bytes=self.cfg.max_image_bytes if image else self.cfg.max_video_bytes,
                         trusted=self.cfg.allowed_media_networks, what=kind)
        return self.local_path(s, loc, kind).read_bytes()

    def local_path(self, s: str, loc: str, kind: str) -> Path:
        """A local file allowed by --allowed-local-media-path ('..' and symlinks resolved before the check)."""
        scheme = s.split(":", 1)[0].lower() if ":" in s[:12] else ""
        if scheme not in ("", "file"):
            raise APIError(400, f"{_where(loc)}: unsupported URL scheme {scheme!r}; use data:, http(s):// or file://",
                           param="messages", code="invalid_media_url")
        root = self.cfg.allowed_local_media_path
        if root is None:
            raise APIError(403, f"{_where(loc)}: local files are not served; send the {kind} as a data: URL, or start "
                                "the server with --allowed-local-media-path DIR", param="messages",
                           code="local_media_disabled")
        raw = unquote(s[7:]) if scheme == "file" else s
        if raw.startswith("//"):  # file://host/path: only the local host
            host, _, rest = raw[2:].partition("/")
            if host not in ("", "localhost"):
                raise APIError(400, f"{_where(loc)}: file URLs must name a local path (file:///abs/path)",
                               param="messages", code="invalid_media_url")
            raw = "/" + rest
        p = Path(raw)
        real = (p if p.is_absolute() else root / p).resolve()
        if not real.is_relative_to(root):
            raise APIError(403, f"{_where(loc)}: {s[:100]!r} is outside the allowed media directory {root} "
                                "('..' and symlinks are resolved first); copy the file under it",
                           param="messages", code="local_media_forbidden")
        if not real.is_file():
            raise APIError(400, f"{_where(loc)}: {s[:100]!r} is not a file under {root}", param="messages",
                           code="media_not_found")
        return real

    def image(self, value, loc: str):
        """A decoded PIL image (declared size checked before decoding)."""
        if isinstance(value, dict) and "url" in value:
            value = value["url"]
        data = self._bytes(value, loc, "image")
        return im.load_image(data, max_decode_pixels=self.cfg.max_image_pixels, name="(request image)")

    def video(self, value, loc: str):
        """A local path (checked or temporary) or a list of decoded frames."""
        if isinstance(value, (list, tuple)):
            self._check_frames(len(value), loc)
            return self._decoded(lambda k: self.image(value[k], f"{loc}].frames[{k}"), len(value), loc)
        if isinstance(value, dict) and "url" in value:
            value = value["url"]
        if isinstance(value, str) and value[:5].lower() == "data:":
            head = value[:value.find(",")].lower()
            if head.startswith(("data:video/jpeg", "data:video/jpg", "data:video/png", "data:image")):
                frames = value[value.find(",") + 1:].split(",")
                self._check_frames(len(frames), loc)
                return self._decoded(lambda k: self._frame(frames[k], loc, k), len(frames), loc)
        if isinstance(value, str) and not value[:8].lower().startswith(("data:", "http://", "https://")):
            return str(self.local_path(value.strip(), loc, "video"))
        data = self._bytes(value, loc, "video")
        fd, path = tempfile.mkstemp(suffix=".video")
        self.tmp.append(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return path

    def _decoded(self, load, n: int, loc: str) -> list:
        """Decode n frames with load(k); their pixels together stay under --max-image-pixels."""
        frames, total = [], 0
        for k in range(n):
            frames.append(load(k))
            total += frames[-1].width * frames[-1].height
            if total > self.cfg.max_image_pixels:
                raise APIError(400, f"{_where(loc)}: the video frames hold more than {self.cfg.max_image_pixels} "
                                    "pixels together (the server's --max-image-pixels); send fewer or smaller frames",
                               param="messages", code="video_too_large")
        return frames

    def _frame(self, b64: str, loc: str, k: int):
        try:
            data = im.b64decode(b64, f"video frame {k}")
        except MediaError as e:
            raise APIError(400, f"{_where(loc)}: {e}", param="messages", code="invalid_base64") from None
        return im.load_image(data, max_decode_pixels=self.cfg.max_image_pixels, name=f"(video frame {k})")

    def _check_frames(self, n: int, loc: str) -> None:
        if n > self.cfg.max_video_frames:
            raise APIError(400, f"{_where(loc)}: {n} video frames is more than the server's limit of "
                                f"{self.cfg.max_video_frames}; sample fewer frames", param="messages",
                           code="too_many_frames")


def check_media_options(opts: dict, cfg: ServeConfig, where: str) -> None:
    """Pixel and frame options must be numbers within what the server allows (no 1-gigapixel upsampling)."""
    cap = min(MAX_PIXELS, cfg.max_visual_tokens * 28 * 28)
    for k in ("min_pixels", "max_pixels", "resized_height", "resized_width", "fps", "nframes", "min_frames",
              "max_frames", "total_pixels", "video_start", "video_end", "sample_fps"):
        if k in opts and (isinstance(opts[k], bool) or not isinstance(opts[k], (int, float)) or opts[k] < 0):
            raise APIError(400, f"{where}: {k} must be a number >= 0, got {opts[k]!r}", param=k,
                           code="invalid_media_option")
    for k in _PIXEL_OPTS:
        if opts.get(k, 0) > cap:
            raise APIError(400, f"{where}: {k}={opts[k]} exceeds the server's cap of {cap} pixels "
                                f"({cfg.max_visual_tokens} visual tokens)", param=k, code="invalid_media_option")
    if opts.get("resized_height", 0) * opts.get("resized_width", 0) > cap:
        raise APIError(400, f"{where}: resized_height x resized_width exceeds the server's cap of {cap} pixels",
                       param="resized_height", code="invalid_media_option")
    for k in ("nframes", "max_frames", "min_frames"):
        if opts.get(k, 0) > cfg.max_video_frames:
            raise APIError(400, f"{where}: {k}={opts[k]} exceeds the server's limit of {cfg.max_video_frames} "
                                "frames", param=k, code="invalid_media_option")
    if opts.get("fps", 1) == 0:
        raise APIError(400, f"{where}: fps must be > 0", param="fps", code="invalid_media_option")
