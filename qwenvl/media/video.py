"""Video preprocessing: files, URLs and frame lists to the frames qwen-vl-utils 0.0.10/0.0.11 builds (reference.md §4).

Frame sampling follows `smart_nframes` (§4.2) and the 0.0.11 `video_start`/`video_end` range logic (§4.3);
frame size follows §4.4. Decoding uses PyAV and keeps only the selected frames in memory (resized as they arrive).

Long videos: the two knobs are `max_frames` (default min(768, total frames), so at most 768 frames reach the
model) and `total_pixels` (default 90316800, the pixel budget shared by all frames: more frames -> smaller frames).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .common import (FPS, FPS_MAX_FRAMES, FPS_MIN_FRAMES, FRAME_FACTOR, IMAGE_FACTOR, MAX_DECODE_PIXELS, MAX_PIXELS,
                     MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, VIDEO_TOTAL_PIXELS, MediaError, ceil_by_factor,
                     floor_by_factor, round_by_factor, smart_resize)

logger = logging.getLogger(__name__)

_RESIZE_CHUNK = 8  # frames resized per F.interpolate call while decoding


@dataclass
class VideoInput:
    """Sampled, resized frames of one video and their timing."""
    frames: torch.Tensor  # (T, 3, H, W) uint8; H, W multiples of 28; T even
    sample_fps: float  # fps actually achieved
    frame_times: list[float]  # seconds from the video start, one per frame
    original_size: tuple[int, int]  # (H, W) of the source frames
    resized_size: tuple[int, int]  # (H, W) after resizing


def _opt(ele: dict, key: str, default=None):
    """ele[key], treating an explicit None like a missing key."""
    v = ele.get(key)
    return default if v is None else v


def _name(ele: dict) -> str:
    v = ele.get("video")
    return repr(os.fspath(v)) if isinstance(v, (str, os.PathLike)) else "the video"


# ----------------------------------------------------------------------------------------------------------------------
# sampling and sizing rules


def smart_nframes(ele: dict, total_frames: int, video_fps: float) -> int:
    """Number of frames to sample (reference.md §4.2): even, in [2, total_frames]."""
    name = _name(ele)
    fps, nframes = _opt(ele, "fps"), _opt(ele, "nframes")
    if fps is not None and nframes is not None:
        raise MediaError(f"{name}: only one of fps or nframes may be given (got fps={fps}, nframes={nframes}); "
                         f"remove one of them")
    if nframes is not None:
        n = round_by_factor(nframes, FRAME_FACTOR)
    else:
        fps = FPS if fps is None else fps
        min_frames = ceil_by_factor(_opt(ele, "min_frames", FPS_MIN_FRAMES), FRAME_FACTOR)
        max_frames = floor_by_factor(_opt(ele, "max_frames", min(FPS_MAX_FRAMES, total_frames)), FRAME_FACTOR)
        n = total_frames / video_fps * fps
        if n > total_frames:
            logger.warning("%s: fps=%s asks for %.1f frames but the video has only %d", name, fps, n, total_frames)
        n = min(min(max(n, min_frames), max_frames), total_frames)
        n = floor_by_factor(n, FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise MediaError(f"{name}: sampling gives {n} frames but must give between {FRAME_FACTOR} and {total_frames} "
                         f"(the frames available); adjust nframes / fps / min_frames / max_frames "
                         f"(or video_start / video_end)")
    return n


def frame_range(ele: dict, total_frames: int, video_fps: float) -> tuple[int, int, int]:
    """(start_frame, end_frame, count) from video_start/video_end in seconds (qwen-vl-utils 0.0.11 logic)."""
    start, end = _opt(ele, "video_start"), _opt(ele, "video_end")
    if start is None and end is None:
        return 0, total_frames - 1, total_frames
    duration = total_frames / video_fps
    start_frame = 0 if start is None else math.ceil(max(0.0, min(start, duration)) * video_fps)
    end_frame = total_frames - 1
    if end is not None:
        end_frame = min(math.floor(max(0.0, min(end, duration)) * video_fps), total_frames - 1)
    if start_frame >= end_frame:
        raise MediaError(f"{_name(ele)}: video_start={start} / video_end={end} select frames {start_frame}..{end_frame}"
                         f" of a {duration:.2f} s video ({total_frames} frames at {video_fps:g} fps); give a range "
                         f"with video_start < video_end inside the video")
    return start_frame, end_frame, end_frame - start_frame + 1


def frame_indices(start_frame: int, end_frame: int, n: int) -> list[int]:
    """torch.linspace(start, end, n).round() in float32, as the reference (round is half-to-even)."""
    return torch.linspace(start_frame, end_frame, n, dtype=torch.float32).round().long().tolist()


def video_max_pixels(ele: dict, nframes: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) per frame for `nframes` frames (reference.md §4.4 steps 1-4).

    max_pixels is returned exactly as computed: a float when total_pixels / n * 2 is not whole (an int cast
    would shift smart_resize's beta)."""
    min_pixels = _opt(ele, "min_pixels", VIDEO_MIN_PIXELS)
    total_pixels = _opt(ele, "total_pixels", VIDEO_TOTAL_PIXELS)
    max_pixels = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    user = _opt(ele, "max_pixels")
    if user is not None:
        if user > max_pixels:
            logger.warning("%s: max_pixels=%s is above the %s allowed for %d frames; using %s",
                           _name(ele), user, max_pixels, nframes, max_pixels)
        max_pixels = min(user, max_pixels)
    if isinstance(max_pixels, float) and max_pixels.is_integer():
        max_pixels = int(max_pixels)
    return min_pixels, max_pixels


def _target_size(ele: dict, height: int, width: int, nframes: int) -> tuple[int, int]:
    rh, rw = _opt(ele, "resized_height"), _opt(ele, "resized_width")
    if rh is not None and rw is not None:
        return smart_resize(rh, rw, IMAGE_FACTOR)
    min_pixels, max_pixels = video_max_pixels(ele, nframes)
    return smart_resize(height, width, IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)


def resize_frames(frames_uint8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, C, H, W) uint8 -> (T, C, h, w) uint8: antialiased bicubic in float32, clamped and rounded (the
    reference's tensor resize; it then calls .float(), which changes no value, so frames stay uint8 here)."""
    if tuple(frames_uint8.shape[-2:]) == tuple(size):
        return frames_uint8
    x = F.interpolate(frames_uint8.float(), size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp_(0, 255).round_().to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# decoding with PyAV


def _claimed_frames(stream) -> int:
    """The container's frame count (0 when unknown)."""
    return int(stream.frames or 0)


def _open(path: str, name: str):
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(f"{name} cannot be opened as a video ({e}); check that the file is a complete, "
                         f"valid video") from e
    if not container.streams.video:
        container.close()
        raise MediaError(f"{name} has no video stream; give a file that contains video")
    stream = container.streams.video[0]
    if (stream.width or 0) * (stream.height or 0) > MAX_DECODE_PIXELS:
        container.close()
        raise MediaError(f"{name}: frames of {stream.width}x{stream.height} exceed {MAX_DECODE_PIXELS} pixels; "
                         f"downscale the video first")
    stream.thread_type = "AUTO"
    return container, stream


def _stream_fps(container, stream, nframes: int | None) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0:
            return float(rate)
    if nframes:
        if stream.duration and stream.time_base:
            secs = float(stream.duration * stream.time_base)
        else:
            secs = (container.duration or 0) / 1e6
        if secs > 0:
            return nframes / secs
    return None


def _decode(path: str, name: str, wanted: dict[int, int], stop_after: int | None, on_frame) -> int:
    """Decode frames in order, calling on_frame(index, rgb ndarray) for wanted ones; returns frames decoded."""
    import av

    container, stream = _open(path, name)
    count = 0
    try:
        for packet in container.demux(stream):
            # Frame threading hides decoder errors, so truncation is detected from the demuxer's flag.
            if packet.is_corrupt:
                raise MediaError(f"{name} is corrupt or truncated: a damaged packet follows frame {count}; "
                                 f"re-encode or replace the file")
            for frame in packet.decode():
                if count in wanted:
                    on_frame(count, frame.to_ndarray(format="rgb24"))
                count += 1
                if stop_after is not None and count > stop_after:
                    return count
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(f"{name} is corrupt or truncated: decoding failed after {count} frames ({e}); "
                         f"re-encode or replace the file") from e
    finally:
        container.close()
    return count


def _plan(ele: dict, total: int, fps: float) -> tuple[list[int], int, int | None]:
    """(indices, range-clipped frame count, last index to decode or None for 'to the end')."""
    start_frame, end_frame, count = frame_range(ele, total, fps)
    n = smart_nframes(ele, count, fps)
    end = _opt(ele, "video_end")
    # Stopping early is safe only when the end comes from video_end, not from the frame count itself.
    stop = end_frame if end is not None and end * fps < total else None
    return frame_indices(start_frame, end_frame, n), count, stop


class _Collector:
    """Receives selected frames and resizes them in chunks, so only resized frames are kept."""

    def __init__(self, ele: dict, n: int):
        self.ele, self.n = ele, n
        self.pending, self.done, self.indices = [], [], []
        self.original_size = self.size = None

    def __call__(self, index: int, rgb: np.ndarray):
        if self.size is None:
            self.original_size = rgb.shape[:2]
            self.size = _target_size(self.ele, rgb.shape[0], rgb.shape[1], self.n)
        if self.pending and self.pending[-1].shape != rgb.shape:
            self.flush()
        self.indices.append(index)
        self.pending.append(rgb)
        if len(self.pending) >= _RESIZE_CHUNK:
            self.flush()

    def flush(self):
        if self.pending:
            x = torch.from_numpy(np.stack(self.pending)).permute(0, 3, 1, 2)
            self.done.append(resize_frames(x, self.size))
            self.pending = []


def _read_video(path: str, ele: dict, name: str) -> VideoInput:
    """Plan with the container's frame count; re-plan with the decoded count if that count proves wrong."""
    if not os.path.exists(path):
        raise MediaError(f"video file {name} not found; check the path")
    container, stream = _open(path, name)
    total = _claimed_frames(stream)
    fps = _stream_fps(container, stream, total)
    container.close()
    exact = False  # True once `total` is a decoded count rather than the container's claim
    while True:
        if not exact and (total < 2 or fps is None):
            total, exact = _decode(path, name, {}, None, lambda i, a: None), True
            if fps is None:
                container, stream = _open(path, name)
                fps = _stream_fps(container, stream, total)
                container.close()
                if fps is None:
                    raise MediaError(f"{name}: the frame rate cannot be determined; re-encode the video")
        if total < 2:
            raise MediaError(f"{name} has {total} decodable frame(s), at least 2 are needed; give a longer video")
        try:
            indices, count, stop = _plan(ele, total, fps)
        except MediaError:
            if exact:
                raise
            total = 0  # the claimed count may be what is wrong: count the frames, then decide
            continue
        collector = _Collector(ele, len(indices))
        decoded = _decode(path, name, dict.fromkeys(indices), stop, collector)
        collector.flush()
        # Valid if every index was reached and, when decoding ran to the end, the count was the one planned with.
        if len(collector.indices) == len(set(indices)) and (stop is not None or decoded == total):
            break
        if exact:
            raise MediaError(f"{name}: the frame count changed between decoding passes; re-encode the video")
        logger.info("%s: container reports %d frames but they do not decode so; re-planning", name, total)
        total, exact = (decoded, True) if stop is None else (0, False)
    frames = torch.cat(collector.done)
    if collector.indices != indices:  # duplicate indices (not expected from linspace) share one decoded frame
        frames = frames[[collector.indices.index(i) for i in indices]]
    return VideoInput(frames=frames, sample_fps=len(indices) / max(count, 1e-6) * fps,
                      frame_times=[i / fps for i in indices], original_size=tuple(collector.original_size),
                      resized_size=tuple(collector.size))


# ----------------------------------------------------------------------------------------------------------------------
# frame lists and remote files


def _download(url: str, timeout: float, max_bytes: int, what: str) -> str:
    """Download `url` to a temp file (caller deletes it), refusing more than max_bytes."""
    suffix = os.path.splitext(urllib.parse.urlparse(url).path)[1][:10]
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="qwenvl-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            size = resp.headers.get("Content-Length")
            if size is not None and size.isdigit() and int(size) > max_bytes:
                raise MediaError(f"{what} {url!r} is {int(size)} bytes, above the {max_bytes}-byte limit; "
                                 f"raise max_remote_bytes or download it yourself")
            total = 0
            while chunk := resp.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise MediaError(f"{what} {url!r} exceeds the {max_bytes}-byte limit; raise max_remote_bytes "
                                     f"or download it yourself")
                out.write(chunk)
    except MediaError:
        os.unlink(tmp)
        raise
    except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are OSErrors
        os.unlink(tmp)
        raise MediaError(f"{what} {url!r} could not be downloaded ({e}); check the URL or the network") from e
    return tmp


def _is_remote(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _local_path(s: str) -> str:
    if s.startswith("file://"):
        p = s[7:]
        return p if os.path.exists(p) else urllib.parse.unquote(p)
    return s


def _load_frame(item, where: str, remote: dict):
    """One frame of a frame list as an RGB PIL image, by the image rules (sources, RGBA on white, bomb guard)."""
    from .image import RemotePolicy, load_image, to_rgb

    policy = RemotePolicy(remote["allow_remote"], remote["timeout"], remote["max_bytes"])
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    return to_rgb(load_image(item, remote=policy, name=where))


def _fetch_frame_list(ele: dict, remote: dict) -> VideoInput:
    items = list(ele["video"])
    if not items:
        raise MediaError("the video frame list is empty; give at least one frame")
    size = original = None
    frames = []
    for i, item in enumerate(items):
        img = _load_frame(item, f"frame {i} of the video frame list", remote)
        if size is None:
            original = (img.height, img.width)
            rh, rw = _opt(ele, "resized_height"), _opt(ele, "resized_width")
            if rh is not None and rw is not None:
                size = smart_resize(rh, rw, IMAGE_FACTOR)
            else:
                size = smart_resize(img.height, img.width, IMAGE_FACTOR, min_pixels=_opt(ele, "min_pixels", MIN_PIXELS),
                                    max_pixels=_opt(ele, "max_pixels", MAX_PIXELS))
        if (img.height, img.width) != size:
            img = img.resize((size[1], size[0]))
        frames.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
    n = len(frames)
    if n % FRAME_FACTOR:
        frames.extend([frames[-1]] * (FRAME_FACTOR - n % FRAME_FACTOR))
    fps = float(_opt(ele, "fps", _opt(ele, "sample_fps", FPS)))
    times = [i / fps for i in range(n)]
    times += [times[-1]] * (len(frames) - n)  # padding repeats the last frame, so also its time
    return VideoInput(frames=torch.stack(frames), sample_fps=fps, frame_times=times,
                      original_size=original, resized_size=tuple(size))


# ----------------------------------------------------------------------------------------------------------------------


def fetch_video(ele: dict, *, allow_remote: bool = False, remote_timeout: float = 10.0,
                max_remote_bytes: int = 512 * 2**20) -> VideoInput:
    """Sample and resize the video in `ele["video"]` (path, file:// or http(s) URL, or a list of frames)."""
    video = ele.get("video")
    remote = dict(allow_remote=allow_remote, timeout=remote_timeout, max_bytes=max_remote_bytes)
    if isinstance(video, (list, tuple)):
        return _fetch_frame_list(ele, remote)
    if not isinstance(video, (str, os.PathLike)):
        raise MediaError(f"unsupported video {type(video).__name__}; give a path, a URL or a list of frames")
    video = os.fspath(video)
    name = repr(video)
    if not _is_remote(video):
        return _read_video(_local_path(video), ele, name)
    if not allow_remote:
        raise MediaError(f"remote video {name} refused: remote downloads are off; pass allow_remote=True or "
                         f"download the file and give its local path")
    tmp = _download(video, remote_timeout, max_remote_bytes, "video")
    try:
        return _read_video(tmp, ele, name)
    finally:
        os.unlink(tmp)
