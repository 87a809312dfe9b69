"""The oracle: docs/SPEC.md written as per-tensor torch ops, for every mode and option.

Slow on purpose (one small expression per line of the SPEC, one tensor at a time) and the thing every
kernel is tested against. `compute_dtype=torch.float64` evaluates everything in double precision and
rounds only when storing, which is how the tests bound the kernels' own rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import philox, reference_adaptive, reference_novograd
from .bucket import Bucket, Phase, abandon, count_step, record_gamma, state_dtype, unscale_grads
from .hyper import Hyper, SGDHyper
from .lars import whole_tensor_norms
from .rounding import store


def lars_trust(s: Tensor, g: Tensor, h: SGDHyper, shard_group=None) -> Tensor:
    """trust = coef * ||s|| / (||g|| + wd * ||s||), 1 where either norm is 0; LARC clips it at 1
    (lr_eff = min(trust * eta, eta)). g is the unscaled gradient; s and g may be shards of the tensor
    (FSDP2), whose squared norms are then summed over `shard_group`."""
    s_norm, g_norm = whole_tensor_norms(
        torch.stack([torch.linalg.vector_norm(s), torch.linalg.vector_norm(g)]), shard_group
    )
    trust = h.trust_coefficient * s_norm / (g_norm + h.weight_decay * s_norm)
    trust = torch.where((s_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
    if h.lars_clip:
        trust = torch.clamp_max(trust, 1.0)
    return trust


def regularized_grad(g: Tensor, s: Tensor, h: SGDHyper, inv_scale: float, shard_group=None) -> Tensor:
    """g' = g * grad_scale_inv + wd * s (maximize: g -> -g), times the LARS trust ratio."""
    g = g * inv_scale
    if h.maximize:
        g = -g
    trust = lars_trust(s, g, h, shard_group) if h.lars else None
    if h.weight_decay != 0 and not h.wd_after_momentum:
        g = g + h.weight_decay * s
    if trust is not None:
        g = trust * g
    return g


def base_update(s: Tensor, m: Tensor | None, g_prime: Tensor, h: SGDHyper, first: bool):
    """m <- mu * m + (1 - dampening) * g' (first step: m <- g'); d = g' + mu * m if nesterov else m
    (mu = 0: d = g'); s <- s - eta * d. Returns (s, m, d)."""
    d = g_prime
    if h.momentum != 0:
        m = g_prime if first else h.momentum * m + (1 - h.dampening) * g_prime
        d = g_prime + h.momentum * m if h.nesterov else m
    if h.wd_after_momentum and h.weight_decay != 0:
        d = d + h.weight_decay * s
    return s - float(h.lr) * d, m, d


def apply(
    phase: Phase,
    bucket: Bucket,
    h: Hyper,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """Runs one phase over the bucket, one tensor at a time, in the form of its base; with AMP's
    grad_scale, the gradients are left unscaled (SPEC, "Apex drop-in semantics")."""
    _APPLY[h.base](phase, bucket, h, grad_scale, found_inf, compute_dtype)
    unscale_grads(bucket, grad_scale, found_inf)


def apply_sgd(
    phase: Phase,
    bucket: Bucket,
    h: SGDHyper,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    compute_dtype: torch.dtype | None,
) -> None:
    """The SGD family's phase over the bucket, one tensor at a time."""
    count_step(phase, bucket, found_inf)
    if found_inf is not None and found_inf.item() != 0:
        abandon(phase, bucket)
        return
    inv_scale = 1.0 / grad_scale.item() if grad_scale is not None else 1.0
    cd = compute_dtype or state_dtype(bucket.dtype)
    gamma = float(h.gamma)
    for i, (x, g, s) in enumerate(zip(bucket.params, bucket.grads, bucket.anchors)):
        put = store(bucket, i, h.seed)
        m = bucket.momenta[i] if bucket.momenta else None
        m_value = m.to(cd) if m is not None else None
        if phase == Phase.EXTRAPOLATE:
            # s <- x; x <- s - gamma * e(g), e = g' (+ mu * m, the buffer read only)
            anchor = (s if bucket.has_master else x).to(cd)
            e = regularized_grad(g.to(cd), anchor, h, inv_scale, bucket.shard_group)
            if h.extrapolate_with_momentum and m_value is not None:
                e = e + h.momentum * m_value
            if not bucket.has_master:
                s.copy_(x)
            put(x, anchor - gamma * e, 2)
            continue
        step = int(bucket.steps[i].item())
        anchor = s.to(cd)
        if phase == Phase.UPDATE_PAST_ANCHOR_FREE:  # x = s - last_gamma * m gives the anchor back
            anchor = x.to(cd) + bucket.last_gammas[i].to(cd) * m_value
        g_prime = regularized_grad(g.to(cd), anchor, h, inv_scale, bucket.shard_group)
        anchor, m_value, d = base_update(anchor, m_value, g_prime, h, first=step <= 1)
        if m is not None:
            put(m, m_value, 1)
        if phase == Phase.UPDATE:  # x <- s; a full-precision s was only the snapshot
            if bucket.has_master:
                s.copy_(anchor)
            put(x, anchor, 0)  # (16-bit without a master: the anchor's rounding, as s would be stored)
        elif phase == Phase.UPDATE_PAST:  # x <- s - gamma * e, e = d (or g')
            put(s, anchor, 0)
            put(x, anchor - gamma * (g_prime if h.past_grad else d), 2)
        elif phase == Phase.UPDATE_PAST_ANCHOR_FREE:  # x <- s - gamma * m; s is not kept
            put(x, anchor - gamma * d, 2)
        elif phase == Phase.UPDATE_NOISE:  # x <- s + sigma * xi
            put(s, anchor, 0)
            xi = philox.normal(h.seed, step, bucket.indices[i], x.numel(), x.device).view_as(x)
            put(x, anchor + h.noise_std * xi.to(cd), 2)
        else:
            raise ValueError(f"unknown phase {phase!r}")
    record_gamma(phase, bucket, h.gamma, found_inf)


# Each base's form (the adaptive bases: reference_adaptive.py).
_APPLY = {
    "sgd": apply_sgd,
    **dict.fromkeys(("adam", "lamb", "adagrad"), reference_adaptive.apply),
    "novograd": reference_novograd.apply,
}
