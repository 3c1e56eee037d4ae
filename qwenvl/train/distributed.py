"""Multi-process training with torchrun and FSDP2 (`fully_shard`), gloo on CPU and NCCL on CUDA.

    torchrun --nproc-per-node 2 -m qwenvl train --config run.yaml                       # one machine
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint $HEAD:29500 --rdzv-id job42 -m qwenvl train --config run.yaml  # several machines

Each vision block and decoder layer is its own FSDP unit (parameters gathered just in time, gradients
reduce-scattered), then the root (embeddings, merger, lm_head). With bf16 autocast on CUDA the policy keeps
fp32 master weights and reduces gradients in fp32.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        log.info("rank %d/%d joined (%s, %s)", rank, world, backend, dev)
    return DistInfo(rank, world, local, dev)


def shard_model(model, info: DistInfo, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2: one unit per vision block and decoder layer, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
    for blk in model.visual.blocks:
        fully_shard(blk, **kw)
    for layer in model.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)


def all_reduce_sum(x: float | int, info: DistInfo) -> float:
    if not info.enabled:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
