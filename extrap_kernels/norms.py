"""Per-tensor sums of squares for the norms the fused backends take before a launch (LARS's trust ratios,
LAMB's gradient clipping), on the tensors' device with no host synchronization."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import _ext


@functools.lru_cache(maxsize=None)
def _cpu_squares():
    """The extension's torch.ops.extrap_kernels.squares, or None where it was not built."""
    ext = _ext.load()
    return getattr(getattr(torch.ops, ext.ops_namespace), "squares", None) if ext is not None else None


def squares(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Each tensor's sum of squares, float64. On CPU the extension's vectorized sum (torch's norm of a 16-bit
    CPU tensor runs about ten times slower than of a float32 one); elsewhere torch._foreach_norm in `dtype`
    (the state dtype, in which the kernels compute), squared."""
    op = _cpu_squares() if tensors[0].device.type == "cpu" else None
    if op is not None:
        return op(tensors)
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)).double().square()


def two_norms(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Each tensor's 2-norm in `dtype`: the square root of the extension's sums on CPU; elsewhere
    torch._foreach_norm itself (one launch, nothing added on a GPU's step)."""
    op = _cpu_squares() if tensors[0].device.type == "cpu" else None
    if op is not None:
        return op(tensors).sqrt().to(dtype)
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype))
