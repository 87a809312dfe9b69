"""The `foreach` backend: the algorithm written with torch `_foreach_*` list ops, as a user would
write it. It runs on any device and is the fallback where no kernel exists; it makes several passes
over memory, which is what the fused backends are measured against. It reads a few scalars on the
host (found_inf, first-step flags, noise steps), a synchronization the fused backends avoid."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .. import philox, rounding
from ..bucket import Bucket, Hyper, Phase, abandon, count_step, record_gamma, state_dtype
from ..lars import trust_ratios

def _regularized_grads(b: Bucket, h: Hyper, weights: list[Tensor], inv_scale, trust) -> list[Tensor]:
    dtype = state_dtype(b.dtype)
    grads = [g if g.dtype == dtype else g.to(dtype) for g in b.grads]  # (16-bit x, or its fp32 working copy)
    g_prime = torch._foreach_mul(grads, -inv_scale if h.maximize else inv_scale)
    if h.weight_decay != 0 and not h.wd_after_momentum:
        torch._foreach_add_(g_prime, weights, alpha=h.weight_decay)
    if trust is not None:
        torch._foreach_mul_(g_prime, trust.unbind())
    return g_prime


def _direction(b: Bucket, h: Hyper, g_prime: list[Tensor]) -> list[Tensor]:
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


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None,
          found_inf: Tensor | None = None) -> None:
    count_step(phase, b, found_inf)
    if found_inf is not None and found_inf.item() != 0:
        abandon(phase, b)
        return
    if b.rounds_stochastically:
        _apply_rounded(phase, b, h, grad_scale)
        return
    _apply(phase, b, h, grad_scale)


def _apply_rounded(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None) -> None:
    """16-bit state without a master: the phase on fp32 copies, then every stored value rounded
    stochastically (values a phase leaves alone are 16-bit numbers, which rounding keeps exactly)."""
    own = all(s is x for s, x in zip(b.anchors, b.params))
    xs = [x.float() for x in b.params]
    ss = xs if own else [s.float() for s in b.anchors]
    ms = [m.float() for m in b.momenta]
    _apply(phase, replace(b, params=xs, anchors=ss, momenta=ms, master=True), h, grad_scale)
    numels = [x.numel() for x in b.params]
    c0, c1, c2 = rounding.bits_flat(h.seed, torch.stack(b.steps), torch.tensor(b.indices), numels, b.device)

    def store(dst: list[Tensor], values: list[Tensor], bits: Tensor) -> None:
        flat = rounding.stochastic_round(torch.cat([v.reshape(-1) for v in values]), b.dtype, bits)
        torch._foreach_copy_(dst, [r.view_as(t) for r, t in zip(torch.split(flat, numels), dst)])

    if not own:
        store(b.anchors, ss, c0)
    if ms:
        store(b.momenta, ms, c1)
    store(b.params, xs, c0 if phase == Phase.UPDATE else c2)  # a local step's x is its anchor


def _apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None) -> None:
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
