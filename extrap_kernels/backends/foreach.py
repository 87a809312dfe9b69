"""The `foreach` backend: the algorithm written with torch `_foreach_*` list ops, as a user would
write it. It runs on any device and is the fallback where no kernel exists; it makes several passes
over memory, which is what the fused backends are measured against. It reads a few scalars on the
host (found_inf, first-step flags, noise steps), a synchronization the fused backends avoid."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .. import novograd_math, philox, recovery, rounding
from ..bucket import Bucket, Phase, abandon, count_step, record_gamma, state_dtype, unscale_grads
from ..hyper import AdamHyper, Hyper, NovoGradHyper, SGDHyper
from ..lamb import clip_factor
from ..lars import trust_ratios, whole_tensor_norms


def _regularized_grads(b: Bucket, h: SGDHyper, weights: list[Tensor], inv_scale, trust) -> list[Tensor]:
    dtype = state_dtype(b.dtype)
    grads = [g if g.dtype == dtype else g.to(dtype) for g in b.grads]  # (16-bit x, or its fp32 working copy)
    g_prime = torch._foreach_mul(grads, -inv_scale if h.maximize else inv_scale)
    if h.weight_decay != 0 and not h.wd_after_momentum:
        torch._foreach_add_(g_prime, weights, alpha=h.weight_decay)
    if trust is not None:
        torch._foreach_mul_(g_prime, trust.unbind())
    return g_prime


def _direction(b: Bucket, h: SGDHyper, g_prime: list[Tensor]) -> list[Tensor]:
    """Momentum update in place; returns d."""
    d = g_prime
    if h.momentum != 0:
        first = torch.stack(b.steps).le(1).tolist()
        fresh = [m for m, f in zip(b.momenta, first) if f]
        if fresh:
            torch._foreach_copy_(fresh, [g for g, f in zip(g_prime, first) if f])
        old = [i for i, f in enumerate(first) if not f]
        if old:
            m_old = [b.momenta[i] for i in old]
            torch._foreach_mul_(m_old, h.momentum)
            torch._foreach_add_(m_old, [g_prime[i] for i in old], alpha=1 - h.dampening)
        d = torch._foreach_add(g_prime, b.momenta, alpha=h.momentum) if h.nesterov else b.momenta
    if h.wd_after_momentum and h.weight_decay != 0:
        d = torch._foreach_add(d, b.anchors, alpha=h.weight_decay)
    return d


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    count_step(phase, b, found_inf)
    if found_inf is not None and found_inf.item() != 0:
        abandon(phase, b)
        return
    if b.rounds_stochastically:
        _apply_rounded(phase, b, h, grad_scale)
    else:
        trust = _APPLY[h.base](phase, b, h, grad_scale)  # (LAMB's ratios, which its anchor-free update records)
        recovery.record(phase, b, h, None, trust)
    unscale_grads(b, grad_scale, found_inf)


def _apply_rounded(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None) -> None:
    """16-bit parameters without a master: the phase on fp32 copies, then every stored 16-bit value rounded
    stochastically (values a phase leaves alone are 16-bit numbers, which rounding keeps exactly). The
    adaptive bases' moments are updated in place (16-bit ones rounded by _rounded_moments)."""
    own = all(s is x for s, x in zip(b.anchors, b.params))
    xs = [x.float() for x in b.params]
    ss = xs if own else [s.float() for s in b.anchors]
    rounds_m = not b.second_moments and b.moment_dtype != state_dtype(b.dtype)
    ms = [m.float() for m in b.momenta] if rounds_m else b.momenta
    trust = _APPLY[h.base](phase, replace(b, params=xs, anchors=ss, momenta=ms, master=True), h, grad_scale)
    recovery.record(phase, b, h, None, trust)  # (the anchor-free update from a 16-bit x: its weights)
    numels = [x.numel() for x in b.params]
    c0, c1, c2 = rounding.bits_flat(h.seed, torch.stack(b.steps), torch.tensor(b.indices), numels, b.device)

    def store(dst: list[Tensor], values: list[Tensor], bits: Tensor) -> None:
        flat = rounding.stochastic_round(torch.cat([v.reshape(-1) for v in values]), b.dtype, bits)
        torch._foreach_copy_(dst, [r.view_as(t) for r, t in zip(torch.split(flat, numels), dst)])

    if not own:
        store(b.anchors, ss, c0)
    if ms and rounds_m:
        store(b.momenta, ms, c1)
    store(b.params, xs, c0 if phase == Phase.UPDATE else c2)  # a local step's x is its anchor


def _apply(phase: Phase, b: Bucket, h: SGDHyper, grad_scale: Tensor | None) -> None:
    inv_scale = 1.0 / grad_scale.item() if grad_scale is not None else 1.0
    weights = b.anchor_values(phase)
    if phase == Phase.UPDATE_PAST_ANCHOR_FREE:  # x = s - last_gamma * m gives the anchor back
        weights = torch._foreach_add(b.params, torch._foreach_mul(b.momenta, b.last_gammas))
        b = replace(b, anchors=weights)
    trust = trust_ratios(phase, b, h, grad_scale) if h.lars else None
    g_prime = _regularized_grads(b, h, weights, inv_scale, trust)
    lr, gamma = float(h.lr), float(h.gamma)
    if phase == Phase.EXTRAPOLATE:
        e = g_prime
        if h.extrapolate_with_momentum and b.momenta:
            torch._foreach_add_(e, b.momenta, alpha=h.momentum)
        if not b.has_master:
            torch._foreach_copy_(b.anchors, b.params)
        torch._foreach_copy_(b.params, torch._foreach_add(weights, e, alpha=-gamma))
        return
    d = _direction(b, h, g_prime)
    if phase == Phase.UPDATE:
        new_anchor = torch._foreach_add(b.anchors, d, alpha=-lr)
        if b.has_master:
            torch._foreach_copy_(b.anchors, new_anchor)
        torch._foreach_copy_(b.params, new_anchor)
        return
    torch._foreach_add_(b.anchors, d, alpha=-lr)
    if phase in (Phase.UPDATE_PAST, Phase.UPDATE_PAST_ANCHOR_FREE):
        x = torch._foreach_add(b.anchors, g_prime if h.past_grad else d, alpha=-gamma)
    else:
        numels = [p.numel() for p in b.params]
        xi = philox.normal_flat(h.seed, torch.stack(b.steps), torch.tensor(b.indices), numels, b.device)
        xi = xi.to(state_dtype(b.dtype))
        noise = [n.view_as(p) for n, p in zip(torch.split(xi, numels), b.params)]
        x = torch._foreach_add(b.anchors, noise, alpha=h.noise_std)
    torch._foreach_copy_(b.params, x)
    record_gamma(phase, b, h.gamma, None)


def _moments(b: Bucket, h: AdamHyper, g_prime: list[Tensor], lookahead: bool) -> tuple[list[Tensor], list[Tensor]]:
    """m and v (v_max with amsgrad) after this gradient: updated in place, or with `lookahead` copies (the
    state read only). Adagrad keeps no m (m = g') and adds g'^2 to its sum."""
    b1, b2 = (float(beta) for beta in h.betas)  # (tensor betas read on the host, as the step counts are)
    if h.accumulates:
        m = g_prime
    else:
        m = torch._foreach_mul(b.momenta, b1) if lookahead else b.momenta
        if not lookahead:
            torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, g_prime, alpha=(1 - b1) if h.averages else 1.0)
    v = torch._foreach_mul(b.second_moments, b2) if lookahead else b.second_moments
    if not lookahead:
        torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g_prime, g_prime, value=float(h.second_gain))
    if b.max_second_moments:
        v = torch._foreach_maximum(b.max_second_moments, v) if lookahead else b.max_second_moments
        if not lookahead:
            torch._foreach_maximum_(v, b.second_moments)
    return m, v


def _rounded_moments(
    b: Bucket, h: AdamHyper, g_prime: list[Tensor], lookahead: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """16-bit moments (exp_avg_dtype), as _moments: updated on fp32 copies; an update rounds each stochastically
    (rounding.MOMENT_KEY's c0 m, c1 v) and stores it, exactly, and v_max, the larger of it and the rounded v, in
    place. Returns the fp32 m and v (v_max) the direction reads: an update's the stored ones."""
    dtype = state_dtype(b.dtype)
    work = replace(
        b,
        momenta=[m.to(dtype) for m in b.momenta],
        second_moments=[v.to(dtype) for v in b.second_moments],
        max_second_moments=[v.to(dtype) for v in b.max_second_moments] if lookahead else [],
    )
    if lookahead:
        return _moments(work, h, g_prime, True)
    m, v = _moments(work, h, g_prime, False)
    numels = [t.numel() for t in m]
    bits = rounding.bits_flat(
        h.seed, torch.stack(b.steps), torch.tensor(b.indices), numels, b.device, rounding.MOMENT_KEY
    )

    def rounded(values: list[Tensor], random: Tensor) -> list[Tensor]:
        flat = rounding.stochastic_round(torch.cat([t.reshape(-1) for t in values]), b.moment_dtype, random)
        return [r.view_as(t) for r, t in zip(torch.split(flat, numels), values)]

    m, v = rounded(m, bits[0]), rounded(v, bits[1])
    torch._foreach_copy_(b.momenta, m)
    torch._foreach_copy_(b.second_moments, v)
    if b.max_second_moments:
        torch._foreach_maximum_(b.max_second_moments, v)
        v = b.max_second_moments
    return [t.to(dtype) for t in m], [t.to(dtype) for t in v]


def _apply_adaptive(phase: Phase, b: Bucket, h: AdamHyper, grad_scale: Tensor | None) -> None:
    """Adam, AdamW, LAMB and Adagrad (reference_adaptive says what each line computes), the step counts
    read on the host for the bias corrections. Returns LAMB's trust ratios (None for the others)."""
    inv_scale = 1.0 / grad_scale.item() if grad_scale is not None else 1.0
    clip = clip_factor(b, h, inv_scale)
    dtype = state_dtype(b.dtype)
    anchors = b.anchor_values(phase)
    if recovery.recovers(phase, b, h):  # x_t and update t's moments give s_t back (the steps are counted)
        seconds = b.max_second_moments or b.second_moments
        last = [int(t) - 1 for t in torch.stack(b.steps).tolist()]
        anchors = recovery.recovered_all(b.params, b.momenta, seconds, b.last_gammas, last, h)
    grads = [g if g.dtype == dtype else g.to(dtype) for g in b.grads]
    g_prime = torch._foreach_mul(grads, (-inv_scale if h.maximize else inv_scale) / clip)
    if h.weight_decay != 0 and not h.decoupled:
        torch._foreach_add_(g_prime, anchors, alpha=h.weight_decay)
    lookahead = phase == Phase.EXTRAPOLATE  # the moments as if updated: copies, the state read only
    if b.rounds_moments:
        m, v = _rounded_moments(b, h, g_prime, lookahead)
    else:
        m, v = _moments(b, h, g_prime, lookahead)
    steps = [int(t) + lookahead for t in torch.stack(b.steps).tolist()]
    if h.bias_correction:
        b1, b2 = (float(beta) for beta in h.betas)
        denominators = torch._foreach_sqrt(v)
        torch._foreach_div_(denominators, [math.sqrt(1 - b2**t) for t in steps])
        torch._foreach_add_(denominators, h.eps)
        e = torch._foreach_div(m, [1 - b1**t for t in steps])
        torch._foreach_div_(e, denominators)
    else:
        e = torch._foreach_div(m, torch._foreach_add(torch._foreach_sqrt(v), h.eps))
        if h.lr_decay != 0:  # (Adagrad)
            torch._foreach_div_(e, [1 + (t - 1) * h.lr_decay for t in steps])
    if h.decoupled and h.weight_decay != 0:
        torch._foreach_add_(e, anchors, alpha=h.weight_decay)
    if h.scales_by_trust:
        s_norms, u_norms = whole_tensor_norms(
            torch.stack([torch.stack(torch._foreach_norm(anchors)), torch.stack(torch._foreach_norm(e))]), b.shard_group
        )
        trust = torch.where((s_norms > 0) & (u_norms > 0), s_norms / u_norms, torch.ones_like(s_norms))
        torch._foreach_mul_(e, list(trust.unbind()))
    _land(phase, b, h, anchors, e)
    return trust if h.scales_by_trust else None


def _land(phase: Phase, b: Bucket, h: Hyper, anchors: list[Tensor], e: list[Tensor]) -> None:
    """The adaptive bases' phase given its direction e: x <- s - gamma * e (EXTRAPOLATE, the snapshot taken),
    or s <- s - lr * e and then x <- s, s - gamma * e or s + sigma * xi."""
    gamma = float(h.gamma)
    if phase == Phase.EXTRAPOLATE:
        if not b.has_master:
            torch._foreach_copy_(b.anchors, b.params)
        torch._foreach_copy_(b.params, torch._foreach_add(anchors, e, alpha=-gamma))
        return
    new_anchor = torch._foreach_add(anchors, e, alpha=-float(h.lr))
    if phase in (Phase.UPDATE_PAST, Phase.UPDATE_NOISE) or (phase == Phase.UPDATE and b.has_master):
        torch._foreach_copy_(b.anchors, new_anchor)  # (the anchor-free update keeps none)
    if phase == Phase.UPDATE:
        x = new_anchor
    elif phase in (Phase.UPDATE_PAST, Phase.UPDATE_PAST_ANCHOR_FREE):
        x = torch._foreach_add(new_anchor, e, alpha=-gamma)
    else:
        numels = [p.numel() for p in b.params]
        xi = philox.normal_flat(h.seed, torch.stack(b.steps), torch.tensor(b.indices), numels, b.device)
        xi = xi.to(state_dtype(b.dtype))
        x = torch._foreach_add(
            new_anchor, [n.view_as(p) for n, p in zip(torch.split(xi, numels), b.params)], alpha=h.noise_std
        )
    torch._foreach_copy_(b.params, x)


def _apply_novograd(phase: Phase, b: Bucket, h: NovoGradHyper, grad_scale: Tensor | None) -> None:
    """NovoGrad (reference_novograd says what each line computes): the per-tensor norms blended as one
    stack, the step counts read on the host for the bias corrections."""
    inv_scale = 1.0 / grad_scale.item() if grad_scale is not None else 1.0
    dtype = state_dtype(b.dtype)
    anchors = b.anchor_values(phase)
    grads = [g if g.dtype == dtype else g.to(dtype) for g in b.grads]
    g_prime = torch._foreach_mul(grads, -inv_scale if h.maximize else inv_scale)
    if h.norm_type == 2:
        n = whole_tensor_norms(torch.stack(torch._foreach_norm(g_prime)), b.shard_group)
    else:
        n = torch.stack([novograd_math.grad_norm(g, h, b.shard_group) for g in g_prime])
    norms = novograd_math.blend(n, torch.stack(b.grad_norms), h)
    lookahead = phase == Phase.EXTRAPOLATE  # the moment and norm as if updated: copies, the state read only
    bias = [novograd_math.corrections(int(t) + lookahead, h) for t in torch.stack(b.steps).tolist()]
    denominators = list((norms / torch.tensor([c2 for _, c2 in bias], dtype=dtype) + h.eps).unbind())
    b1 = h.betas[0]
    m = torch._foreach_mul(b.momenta, b1) if lookahead else b.momenta
    if not lookahead:
        torch._foreach_mul_(m, b1)
    inside = torch._foreach_div(g_prime, denominators) if h.reg_inside_moment else g_prime
    if h.reg_inside_moment and h.weight_decay != 0:
        torch._foreach_add_(inside, anchors, alpha=h.weight_decay)
    torch._foreach_add_(m, inside, alpha=(1 - b1) if h.grad_averaging else 1.0)
    e = torch._foreach_div(m, [c1 for c1, _ in bias])
    if not h.reg_inside_moment:
        torch._foreach_div_(e, denominators)
        if h.weight_decay != 0:
            torch._foreach_add_(e, anchors, alpha=h.weight_decay)
    if not lookahead:
        torch._foreach_copy_(b.grad_norms, list(norms.unbind()))
    _land(phase, b, h, anchors, e)


# each base's form
_APPLY = {"sgd": _apply, **dict.fromkeys(("adam", "lamb", "adagrad"), _apply_adaptive), "novograd": _apply_novograd}
