"""The per-tensor LARS trust ratios of a bucket, computed on the bucket's device for the fused backends
(one multi-tensor sum of squares per list, norms.py, no host synchronization). The reference has its own per-tensor
version, which these are tested against."""

from __future__ import annotations

import torch
from torch import Tensor

from .bucket import Bucket, Phase, state_dtype
from .hyper import SGDHyper
from .norms import two_norms


def whole_tensor_norms(norms: Tensor, group) -> Tensor:
    """Norms of sharded tensors (sharded.py) from their local shards' norms: one all-reduce of the squares."""
    if group is None:
        return norms
    squares = norms.square()
    torch.distributed.all_reduce(squares, group=group)
    return squares.sqrt()


def trust_ratios(phase: Phase, bucket: Bucket, h: SGDHyper, grad_scale: Tensor | None) -> Tensor:
    """trust[i] = coef * ||s_i|| / (||g_i|| + wd * ||s_i||), 1 where either norm is 0, clipped at 1
    with LARC; g is the unscaled gradient. A 1-D tensor of the bucket's state dtype."""
    dtype = state_dtype(bucket.dtype)
    s_norm = two_norms(bucket.anchor_values(phase), dtype)
    g_norm = two_norms(bucket.grads, dtype)
    s_norm, g_norm = whole_tensor_norms(torch.stack([s_norm, g_norm]), bucket.shard_group)
    if grad_scale is not None:
        g_norm = g_norm / grad_scale.to(dtype)
    trust = h.trust_coefficient * s_norm / (g_norm + h.weight_decay * s_norm)
    trust = torch.where((s_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
    if h.lars_clip:
        trust = torch.clamp_max(trust, 1.0)
    return trust
