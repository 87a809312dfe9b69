"""LAMB's per-step values for the fused backends, on the bucket's device with no host synchronization: the
gradient divisor that folds the global-norm clipping into AMP's grad_scale, and the per-tensor trust ratios
from the kernels' reading pass (torch.ops.extrap_kernels.norms); and the clipping factor, read on the host
by the reference and foreach. reference_adaptive computes the trust ratios on the host, one tensor at a
time, and is what these are tested against."""

from __future__ import annotations

import torch
from torch import Tensor

from .bucket import Bucket, state_dtype
from .hyper import AdamHyper
from .lars import whole_tensor_norms


def clip_factor(bucket: Bucket, h: AdamHyper, inv_scale: float) -> float:
    """max(1, ||g||_global / max_grad_norm), the norm of all the step's gradients, unscaled, read on the host
    (the reference and foreach); 1 where the base does not clip."""
    if not h.clips or bucket.global_grad_norm is None:
        return 1.0
    return max(1.0, float(bucket.global_grad_norm) * inv_scale / h.max_grad_norm)


def grad_divisor(bucket: Bucket, h: AdamHyper, grad_scale: Tensor | None) -> Tensor | None:
    """What the kernels divide the gradients by: grad_scale * max(1, ||g||_global / grad_scale /
    max_grad_norm), a one-element tensor of the state dtype; grad_scale itself where LAMB does not clip."""
    if not h.clips or bucket.global_grad_norm is None:
        return grad_scale
    norm = bucket.global_grad_norm.to(bucket.device, torch.float64).reshape(())
    scale = None if grad_scale is None else grad_scale.to(bucket.device, torch.float64).reshape(())
    clip = (norm if scale is None else norm / scale).div(h.max_grad_norm).clamp_min(1.0)
    return (clip if scale is None else clip * scale).to(state_dtype(bucket.dtype)).reshape(1)


def trust_ratios(squares: Tensor, shard_group=None) -> Tensor:
    """||s|| / ||u|| per tensor (1 where either is 0) from the reading pass's [tensors, 2] sums of s^2 and
    u^2; the whole tensors' norms where the bucket holds shards (FSDP2), summed over `shard_group`."""
    s_norm, u_norm = whole_tensor_norms(squares.sqrt().t(), shard_group)
    return torch.where((s_norm > 0) & (u_norm > 0), s_norm / u_norm, torch.ones_like(s_norm))


def step_inputs(bucket: Bucket, h: AdamHyper, grad_scale: Tensor | None, norms) -> tuple:
    """A fused backend's per-step (grad_scale, trust) for an adaptive base: the gradient divisor with LAMB's
    clipping folded in, and LAMB's trust ratios from the backend's reading pass `norms(divisor)` (its
    [tensors, 2] sums); (grad_scale, None) where the base neither clips nor scales by trust (Adam)."""
    grad_scale = grad_divisor(bucket, h, grad_scale)
    return grad_scale, (trust_ratios(norms(grad_scale), bucket.shard_group) if h.scales_by_trust else None)
