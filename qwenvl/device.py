"""Device and precision choice: CUDA when present, else CPU; bf16 only where the hardware runs it fast."""
from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bf16 matmuls run natively (on AVX2-only CPUs they are emulated and slow)."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_dtype(device: torch.device | str, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
    """The checkpoint's dtype where the device runs it fast; fp32 on CPUs without bf16/fp16 hardware."""
    device = torch.device(device)
    want = checkpoint_dtype or torch.float32
    if device.type == "cuda":
        if want == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return want
    if want in (torch.bfloat16, torch.float16) and not cpu_has_fast_bf16():
        log.info("this CPU has no AVX512-BF16/AMX: running in float32 (bf16 would be emulated and slower)")
        return torch.float32
    if want == torch.float16:
        return torch.bfloat16  # fp16 matmuls are slow on CPU and overflow in the ViT; bf16 is the fast path
    return want


def varlen_friendly_sdpa(device: torch.device | str) -> bool:
    """On CUDA, turn off PyTorch's cuDNN attention backend (flash / memory-efficient / math stay on).

    cuDNN builds and caches an execution plan per new q/k/v shape; packed training calls attention once per sample
    and per window group, and those lengths change every step, so nearly every call plans anew. On an H200
    (torch 2.11) a 16,384-token step of the embedded model took 4.6 s with it and 0.5 s without
    (docs/embedded-runs/notes.md). Process-wide; `QWENVL_CUDNN_SDPA=1` keeps cuDNN. Returns True when it acted."""
    if torch.device(device).type != "cuda" or os.environ.get("QWENVL_CUDNN_SDPA") == "1":
        return False
    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("cuDNN attention off for this process (a plan per new sequence length; QWENVL_CUDNN_SDPA=1 keeps it)")
    return True
