"""The oracle for NovoGrad (docs/SPEC.md "NovoGrad"; Apex FusedNovoGrad's semantics), every mode and option,
as per-tensor torch ops: `reference.apply` hands it the buckets of base "novograd" (hyper.NovoGradHyper).
A bucket's `momenta` are the first moments m (exp_avg), its `grad_norms` each tensor's running gradient norm.
The modes land as the Adam family's do (reference_adaptive.extrapolate and land)."""

from __future__ import annotations

import torch
from torch import Tensor

from .bucket import Bucket, Phase, abandon, count_step, state_dtype
from .hyper import NovoGradHyper
from .novograd_math import blend, corrections, grad_norm
from .reference_adaptive import extrapolate, land
from .rounding import store


def direction(s: Tensor, m: Tensor, g_prime: Tensor, norm: Tensor, t: int, h: NovoGradHyper):
    """(m, e) after update t, from the running norm after it: d = norm / sqrt(1 - b2^t) + eps; Apex's
    moment mode 1 (reg_inside_moment False): m <- b1 * m + beta3 * g', e = (m / (1 - b1^t)) / d + wd * s;
    mode 0: m <- b1 * m + beta3 * (g' / d + wd * s), e = m / (1 - b1^t). beta3 = 1 - b1 (grad_averaging) or 1."""
    b1 = h.betas[0]
    beta3 = 1 - b1 if h.grad_averaging else 1.0
    bias1, bias2 = corrections(t, h)
    d = norm / bias2 + h.eps
    if h.reg_inside_moment:
        m = b1 * m + beta3 * (g_prime / d + h.weight_decay * s)
        return m, m / bias1
    m = b1 * m + beta3 * g_prime
    return m, (m / bias1) / d + h.weight_decay * s


def apply(
    phase: Phase,
    bucket: Bucket,
    h: NovoGradHyper,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """One phase over the bucket, one tensor at a time, as reference_adaptive.apply: the extrapolation looks
    ahead with the moment and the norm as if updated at step t + 1, storing neither."""
    count_step(phase, bucket, found_inf)
    if found_inf is not None and found_inf.item() != 0:
        abandon(phase, bucket)
        return
    inv_scale = 1.0 / grad_scale.item() if grad_scale is not None else 1.0
    cd = compute_dtype or state_dtype(bucket.dtype)
    for i, g in enumerate(bucket.grads):
        put = store(bucket, i, h.seed)
        anchor = bucket.anchor_values(phase)[i].to(cd)
        g_prime = g.to(cd) * (-inv_scale if h.maximize else inv_scale)
        norm = blend(grad_norm(g_prime, h, bucket.shard_group), bucket.grad_norms[i].to(cd), h)
        step = int(bucket.steps[i].item())
        ahead = phase == Phase.EXTRAPOLATE  # (the look-ahead: step t + 1's, nothing stored)
        m, e = direction(anchor, bucket.momenta[i].to(cd), g_prime, norm, step + ahead, h)
        if ahead:
            extrapolate(bucket, i, anchor, e, h, put)
            continue
        bucket.momenta[i].copy_(m)
        bucket.grad_norms[i].copy_(norm)
        land(phase, bucket, i, anchor, e, h, put, step, cd)
