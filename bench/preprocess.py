"""Preprocessing benchmark: a 4000x3000 image and a 2-minute 720p video sampled at 2 fps.

Runs our processor and the reference path in the same process, side by side:
- image, reference: PIL decode + qwen-vl-utils `fetch_image` rules (RGB, smart_resize, PIL bicubic) followed by
  transformers 4.51.3 `Qwen2VLImageProcessor` (the slow path the reference uses);
- video, reference: qwen-vl-utils' torchvision backend emulated (torchvision does not import here): PyAV decodes
  every frame to RGB (what `torchvision.io.read_video` does), the linspace-selected frames are resized with torch
  bicubic + antialias, then the transformers 4.51.3 processor patchifies them. Keeping only the selected frames
  in memory is kinder to the reference than read_video, which holds all of them.

Usage: .venv/bin/python bench/preprocess.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"


def make_video(path: Path, seconds=120, fps=30, w=1280, h=720):
    import av
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    c = av.open(str(tmp), "w")
    s = c.add_stream("libx264", rate=Fraction(fps))
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"preset": "ultrafast", "crf": "23"}
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 255 // (w + h))], -1).astype(np.uint8)
    for i in range(seconds * fps):
        frame = np.roll(base, 8 * i, axis=1)
        frame[(i * 5) % (h - 80):(i * 5) % (h - 80) + 80, 100:180] = 255
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    tmp.rename(path)
    return path


def make_image(path: Path, w=4000, h=3000):
    from PIL import Image
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(path, quality=90)
    return path


def timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    sys.path.insert(0, str(ROOT / "tests"))
    import qwenvl
    from oracle import hf_processor, qvu_fetch_image
    from qwenvl.chat_template import DEFAULT_CHAT_TEMPLATE
    from qwenvl.media.video import frame_indices, smart_nframes, video_max_pixels
    from qwenvl.media.common import smart_resize
    from qwenvl.tiny import build_tokenizer, make_random_checkpoint
    from PIL import Image
    import av

    ckpt = Path(tempfile.mkdtemp()) / "tiny"
    make_random_checkpoint(ckpt)
    vlm = qwenvl.load(ckpt)
    ref = hf_processor(build_tokenizer(), DEFAULT_CHAT_TEMPLATE)
    img_path = make_image(CACHE / "photo_4000x3000.jpg")
    vid_path = make_video(CACHE / "clip_120s_720p30.mp4")

    def ours_image():
        return vlm.processor([{"role": "user", "content": [{"image": str(img_path)}, {"text": "Describe."}]}])

    def ref_image():
        img = qvu_fetch_image(Image.open(img_path))
        return ref.image_processor(images=[img], return_tensors="pt")

    a, b = ours_image(), ref_image()
    assert torch.equal(a.image_grid_thw, b["image_grid_thw"])
    assert (a.pixel_values - b["pixel_values"]).abs().max() <= 1e-6

    def ours_video():
        return vlm.processor([{"role": "user", "content": [{"video": str(vid_path), "fps": 2.0}, {"text": "?"}]}],
                             max_length=200_000)  # 86k visual tokens: over the tiny config's 32k context

    def ref_video():
        with av.open(str(vid_path)) as c:
            st = c.streams.video[0]
            total, fps = st.frames, float(st.average_rate)
            n = smart_nframes({"fps": 2.0}, total, fps)
            idx = set(frame_indices(0, total - 1, n))
            keep = []
            for i, f in enumerate(c.decode(st)):
                arr = f.to_ndarray(format="rgb24")  # read_video converts every frame
                if i in idx:
                    keep.append(arr)
        frames = torch.from_numpy(np.stack(keep)).permute(0, 3, 1, 2)
        lo, hi = video_max_pixels({}, n)
        h, w = smart_resize(frames.shape[2], frames.shape[3], 28, lo, hi)
        x = torch.nn.functional.interpolate(frames.float(), size=(h, w), mode="bicubic", antialias=True)
        x = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return ref.image_processor(images=None, videos=[x], return_tensors="pt")

    a, b = ours_video(), ref_video()
    assert torch.equal(a.video_grid_thw, b["video_grid_thw"])
    assert (a.pixel_values_videos - b["pixel_values_videos"]).abs().max() <= 1e-5

    rows = []
    for name, ours, theirs in (("image 4000x3000 (JPEG)", ours_image, ref_image),
                               ("video 120 s 720p30 at 2 fps", ours_video, ref_video)):
        to, tr = timeit(ours, args.repeats), timeit(theirs, args.repeats)
        rows.append((name, to, tr))
    print("| input | qwenvl | reference | speed-up |")
    print("|---|---|---|---|")
    for name, to, tr in rows:
        print(f"| {name} | {to:.2f} s | {tr:.2f} s | {tr / to:.2f}x |")


if __name__ == "__main__":
    main()
