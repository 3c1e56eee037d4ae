"""Inference-only fast linear layers for the CPU: weights pre-packed once into oneDNN's blocked layout.

On this class of machine a plain `F.linear` (MKL sgemm on a [N, K] weight) reaches ~6 GFLOP/s for one row and
~11 GFLOP/s for eight, far under the memory/compute ceilings; the same product on a pre-packed oneDNN weight runs
~1.4x faster for one row and ~3x faster for eight (bench/generate.py, docs/benchmarks.md). Projections that read
the same input are fused (q|k|v, gate|up) so a decode step issues fewer, larger products.

Packing is a runtime knob (`qwenvl.load(..., pack=...)`), never part of the config: `pack_model` swaps modules in
place and `unpack_model` restores plain `nn.Linear`s with bit-identical weights (saving and training use those).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def packing_supported(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """True when oneDNN can pack weights of `dtype` on this CPU (bf16 needs AVX512-BW/VL/DQ or AVX-NE-CONVERT)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 1)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 8, dtype=dtype), w, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


class PackedLinear(nn.Module):
    """One or more `nn.Linear`s sharing an input, as one packed product. Returns a tensor, or a tuple of views
    (one per source layer) when several were fused."""

    def __init__(self, linears: list[nn.Linear], names: list[str]):
        super().__init__()
        ws = [lin.weight.detach() for lin in linears]
        w = ws[0] if len(ws) == 1 else torch.cat(ws)  # (N_total, K)
        self.in_features = w.shape[1]
        self.splits = [lin.out_features for lin in linears]
        self.names = names
        self.has_bias = [lin.bias is not None for lin in linears]
        if any(self.has_bias):
            b = torch.cat([lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features, dtype=w.dtype)
                           for lin in linears])
            self.bias = nn.Parameter(b, requires_grad=False)
        else:
            self.bias = None
        self.dtype = w.dtype
        self._w = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)  # opaque oneDNN tensor

    def forward(self, x: torch.Tensor):
        y = torch.ops.mkldnn._linear_pointwise(x, self._w, self.bias, "none", [], "")  # (..., N_total)
        if len(self.splits) == 1:
            return y
        return y.split(self.splits, dim=-1)

    def unpack(self) -> list[nn.Linear]:
        w = self._w.to_dense()
        out = []
        for i, (wi, n) in enumerate(zip(w.split(self.splits), self.splits)):
            lin = nn.Linear(self.in_features, n, bias=self.has_bias[i], dtype=self.dtype)
            lin.weight = nn.Parameter(wi.clone(), requires_grad=False)
            if self.has_bias[i]:
                start = sum(self.splits[:i])
                lin.bias = nn.Parameter(self.bias.detach()[start:start + n].clone(), requires_grad=False)
            out.append(lin)
        return out

    def extra_repr(self) -> str:
        return f"{'|'.join(self.names)}: in={self.in_features}, out={self.splits}, {self.dtype}"


# (module attribute holding the fused product, names of the source linears): the groups that share an input.
FUSED_GROUPS = {"Attention": ("qkv_fused", ("q_proj", "k_proj", "v_proj")),
                "MLP": ("gate_up_fused", ("gate_proj", "up_proj")),
                "VisionMLP": ("gate_up_fused", ("gate_proj", "up_proj"))}


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps mid-sized frees, which would inflate peak RSS while
    thousands of weights are re-laid out one by one)."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def pack_model(model: nn.Module) -> int:
    """Pack every linear of `model` in place (fusing FUSED_GROUPS); returns the number of products packed.

    A tied lm_head stays a plain linear: packing it would need a second copy of the embedding matrix."""
    n = 0
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    # names only: holding a list of modules would keep every replaced weight alive until the end
    groups = [name for name, m in model.named_modules() if type(m).__name__ in FUSED_GROUPS]
    for name in groups:
        mod = model.get_submodule(name)
        attr, names = FUSED_GROUPS[type(mod).__name__]
        if getattr(mod, attr, None) is not None:
            continue
        setattr(mod, attr, PackedLinear([getattr(mod, nm) for nm in names], list(names)))
        for nm in names:
            delattr(mod, nm)
        del mod
        _release_freed_memory()
        n += 1
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    for name in linears:
        parent_name, _, attr = name.rpartition(".")
        if tied and parent_name == "" and attr == "lm_head":
            continue
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, PackedLinear([getattr(parent, attr)], [attr]))
        del parent
        _release_freed_memory()
        n += 1
    return n


def unpack_model(model: nn.Module) -> None:
    """Undo `pack_model`: plain `nn.Linear`s with the same weights, under their HF names."""
    for mod in list(model.modules()):
        group = FUSED_GROUPS.get(type(mod).__name__)
        if group is not None and getattr(mod, group[0], None) is not None:
            attr, names = group
            for nm, lin in zip(names, getattr(mod, attr).unpack()):
                setattr(mod, nm, lin)
            setattr(mod, attr, None)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                setattr(parent, name, child.unpack()[0])


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all weights, packed or not (tied tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    for m in model.modules():
        if isinstance(m, PackedLinear):
            total += m.in_features * sum(m.splits) * m._w.element_size()
    return total


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every packed product expanded back to its HF-named plain weights/biases."""
    state = {}
    packed = {name: m for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    for k, v in model.state_dict().items():
        owner = k.rsplit(".", 1)[0]
        if owner not in packed:
            state[k] = v
    for name, m in packed.items():
        parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
        fused = len(m.names) > 1
        for lin, nm in zip(m.unpack(), m.names):
            prefix = parent + nm if fused else name
            state[prefix + ".weight"] = lin.weight.detach()
            if lin.bias is not None:
                state[prefix + ".bias"] = lin.bias.detach()
    return state
