"""The oracle for the adaptive bases: docs/SPEC.md "Base update, Adam family and LAMB" written as
per-tensor torch ops, with every mode (local, past, noise) and option. `reference.apply` hands it the
buckets of base "adam", "lamb" or "adagrad" (hyper.AdamHyper, hyper.LambHyper, hyper.AdagradHyper).

As `reference.py` is for the SGD family, this is slow on purpose and the thing the Adam and LAMB kernels
are tested against; `compute_dtype=torch.float64` evaluates in double precision and rounds only when
storing. A bucket's `momenta` are the first moments m (exp_avg), `second_moments` the v (exp_avg_sq),
`max_second_moments` their running maxima (amsgrad). Adagrad keeps no first moment (`momenta` is empty:
m = g' each step) and its v is the running sum of g'^2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import philox, recovery
from .bucket import Bucket, Phase, abandon, count_step, state_dtype
from .hyper import AdamHyper
from .lamb import clip_factor
from .lars import whole_tensor_norms
from .rounding import round_moments, store


def regularized_grad(g: Tensor, s: Tensor, h: AdamHyper, inv_scale: float, clip: float) -> Tensor:
    """g' = g * grad_scale_inv (maximize: -g), LAMB: divided by the clip factor; L2 decay (not
    decoupled): g' += wd * s."""
    g = g * (inv_scale / clip)
    if h.maximize:
        g = -g
    if h.weight_decay != 0 and not h.decoupled:
        g = g + h.weight_decay * s
    return g


def moments(m: Tensor, v: Tensor, v_max: Tensor | None, g_prime: Tensor, h: AdamHyper):
    """m <- b1 * m + (1 - b1) * g' (LAMB without grad_averaging: + g'; Adagrad: m = g'); v <- b2 * v +
    (1 - b2) * g'^2 (Adagrad: v + g'^2); amsgrad: v_max <- max(v_max, v). Returns the new (m, v, v_max),
    storing nothing."""
    b1, b2 = h.betas
    m = g_prime if h.accumulates else b1 * m + ((1 - b1) if h.averages else 1.0) * g_prime
    v = b2 * v + h.second_gain * g_prime * g_prime
    if v_max is not None:
        v_max = torch.maximum(v_max, v)
    return m, v, v_max


def direction(s: Tensor, m: Tensor, v: Tensor, v_max: Tensor | None, t: int, h: AdamHyper, shard_group=None) -> Tensor:
    """direction_and_trust's e."""
    return direction_and_trust(s, m, v, v_max, t, h, shard_group)[0]


def direction_and_trust(
    s: Tensor, m: Tensor, v: Tensor, v_max: Tensor | None, t: int, h: AdamHyper, shard_group=None
) -> tuple[Tensor, Tensor | None]:
    """e, the direction of the update s <- s - eta * e, from the moments after step t:
    a = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps) (bias_correction=False: no divisions; v_max
    in place of v with amsgrad; Adagrad: a = m / (sqrt(v) + eps) / (1 + (t - 1) * lr_decay)); Adam: e = a;
    AdamW: e = a + wd * s; LAMB: u = a (+ wd * s decoupled), e = trust * u, trust = ||s|| / ||u|| (1 where
    either is 0; only where wd != 0 unless use_nvlamb; the norms of the whole tensors where s and u are
    shards, summed over `shard_group`); and LAMB's trust (None where it does not scale by one)."""
    b1, b2 = h.betas
    second = v_max if v_max is not None else v
    if h.bias_correction:
        c2 = 1 - b2**t  # (a tensor for tensor betas)
        a = (m / (1 - b1**t)) / (second.sqrt() / (c2.sqrt() if isinstance(c2, Tensor) else math.sqrt(c2)) + h.eps)
    else:
        a = m / (second.sqrt() + h.eps)
        if h.lr_decay != 0:
            a = a / (1 + (t - 1) * h.lr_decay)
    e = a + h.weight_decay * s if h.decoupled else a
    if h.scales_by_trust:
        s_norm, u_norm = whole_tensor_norms(
            torch.stack([torch.linalg.vector_norm(s), torch.linalg.vector_norm(e)]), shard_group
        )
        trust = torch.where((s_norm > 0) & (u_norm > 0), s_norm / u_norm, torch.ones_like(s_norm))
        return trust * e, trust
    return e, None


def apply(
    phase: Phase,
    bucket: Bucket,
    h: AdamHyper,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """One phase over the bucket, one tensor at a time:
    EXTRAPOLATE (mode "local", step 2): s <- x; x <- s - gamma * e~, e~ the look-ahead direction from the
      moments AS IF updated with this gradient at step t + 1, nothing else stored (the state is read only);
    UPDATE / UPDATE_PAST / UPDATE_NOISE: the base update of s with the gradient taken at x, then
      x <- s ("local" step 4), x <- s - gamma * e (e the direction just applied) or x <- s + sigma * xi."""
    count_step(phase, bucket, found_inf)
    if found_inf is not None and found_inf.item() != 0:
        abandon(phase, bucket)
        return
    inv_scale = 1.0 / grad_scale.item() if grad_scale is not None else 1.0
    clip = clip_factor(bucket, h, inv_scale)
    cd = compute_dtype or state_dtype(bucket.dtype)
    trusts = []  # (LAMB's, which its anchor-free update records)
    for i, g in enumerate(bucket.grads):
        put = store(bucket, i, h.seed)  # (16-bit x and anchor without a master: rounded stochastically)
        anchor = bucket.anchor_values(phase)[i].to(cd)
        v_max = bucket.max_second_moments[i].to(cd) if bucket.max_second_moments else None
        m = bucket.momenta[i].to(cd) if bucket.momenta else None  # (none for Adagrad)
        v = bucket.second_moments[i].to(cd)
        step = int(bucket.steps[i].item())
        if recovery.recovers(phase, bucket, h):  # x_t and update t's moments give s_t back
            second = v_max if v_max is not None else v
            anchor = recovery.recovered(anchor, m, second, bucket.last_gammas[i].to(cd), step - 1, h)
        g_prime = regularized_grad(g.to(cd), anchor, h, inv_scale, clip)
        if phase != Phase.EXTRAPOLATE and bucket.rounds_moments:  # (16-bit: rounded before the direction reads them)
            m, v, _ = moments(m, v, None, g_prime, h)
            m, v = (t.to(cd) for t in round_moments(bucket, i, h.seed, m, v))
            v_max = torch.maximum(v_max, v) if v_max is not None else None
        else:
            m, v, v_max = moments(m, v, v_max, g_prime, h)
        if phase == Phase.EXTRAPOLATE:
            extrapolate(bucket, i, anchor, direction(anchor, m, v, v_max, step + 1, h, bucket.shard_group), h, put)
            continue
        e, trust = direction_and_trust(anchor, m, v, v_max, step, h, bucket.shard_group)
        trusts.append(trust)
        if bucket.momenta:
            bucket.momenta[i].copy_(m)
        bucket.second_moments[i].copy_(v)
        if v_max is not None:
            bucket.max_second_moments[i].copy_(v_max)
        land(phase, bucket, i, anchor, e, h, put, step, cd)
    recovery.record(phase, bucket, h, None, torch.stack(trusts) if trusts and trusts[0] is not None else None)


def extrapolate(bucket: Bucket, i: int, anchor: Tensor, e: Tensor, h, put) -> None:
    """Mode "local" step 2 for tensor i of the adaptive bases: s <- x; x <- s - gamma * e (the look-ahead
    direction); `put` stores as store() does."""
    x, s = bucket.params[i], bucket.anchors[i]
    if not bucket.has_master:
        s.copy_(x)
    put(x, anchor - float(h.gamma) * e, 2)


def land(phase: Phase, bucket: Bucket, i: int, anchor: Tensor, e: Tensor, h, put, step: int, cd) -> None:
    """The rest of an update of tensor i of the adaptive bases, given its direction e: s <- s - lr * e, then
    x <- s (UPDATE), s - gamma * e (UPDATE_PAST) or s + sigma * xi (UPDATE_NOISE)."""
    x, s = bucket.params[i], bucket.anchors[i]
    anchor = anchor - float(h.lr) * e
    if phase == Phase.UPDATE:  # x <- s; a full-precision s was only the snapshot
        if bucket.has_master:
            s.copy_(anchor)
        put(x, anchor, 0)  # (without a master: the anchor's rounding, as s would be stored)
    elif phase == Phase.UPDATE_PAST:
        put(s, anchor, 0)
        put(x, anchor - float(h.gamma) * e, 2)
    elif phase == Phase.UPDATE_PAST_ANCHOR_FREE:  # (s is not kept: the next update recovers it)
        put(x, anchor - float(h.gamma) * e, 2)
    elif phase == Phase.UPDATE_NOISE:
        put(s, anchor, 0)
        xi = philox.normal(h.seed, step, bucket.indices[i], x.numel(), x.device).view_as(x)
        put(x, anchor + h.noise_std * xi.to(cd), 2)
    else:
        raise ValueError(f"phase {phase!r} has no adaptive form")
