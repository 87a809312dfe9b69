"""The Adam family's anchor-free past update (docs/SPEC.md "Memory-lean variants, adaptive bases and noise
mode"). Update t made x_t = s_t - gamma_t * e_t with e_t = a_t (Adam: L2 decay inside g') or a_t + wd * s_{t-1}
(AdamW), a_t from the moments that update stored. With s_t = s_{t-1} - eta_t * e_t this gives the anchor back:

    s_t = x_t + r0 * x_t + r1 * a_t,   r1 = gamma_t / (1 - eta_t wd - gamma_t wd),  r0 = wd * r1   (AdamW)
                                       r1 = gamma_t,                               r0 = 0         (Adam)

so the anchor need not be stored. LAMB's update is the same with eta_t and gamma_t scaled by the tensor's trust
ratio of step t (e_t = trust * u_t): its weights fold the ratio in, and its reading pass recovers s too (the ratio
is ||s|| / ||u||). Each parameter keeps its (r0, r1), "recovery" (a 2-element tensor of the state
dtype), recorded by every update with its own lr, gamma and weight decay (a scheduler may change them): 0 and 0
before the first update and after a write to x (writes.py), where s = x. The update recomputes a_t with the
bias corrections of step t, exactly as step t computed it, then runs the past update from the recovered s and
stores x and the moments alone: torch's fused AdamW's traffic. Every backend runs this: the reference and
foreach with these functions, the kernels with extrap_math.h's recovered_adaptive_anchor (Triton: its mirror)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bucket import Bucket, Phase
from .hyper import AdamHyper

KEY = "recovery"


def recovers(phase: Phase, b: Bucket, h) -> bool:
    """Whether this launch is the Adam family's anchor-free past update (SGD's recomputes from last_gamma)."""
    return phase == Phase.UPDATE_PAST_ANCHOR_FREE and h.base in ("adam", "lamb")


def weights(h: AdamHyper, dtype: torch.dtype, device: torch.device, trust: Tensor | None = None) -> Tensor:
    """(r0, r1) after an update with h's lr, gamma and weight decay, on the device (lr and gamma may be device
    tensors: capturable; nothing is read on the host). With LAMB's per-tensor `trust` ratios (the update's, the
    state dtype) lr and gamma are scaled by them first: a [tensors, 2] tensor, a row per tensor."""
    lr = torch.as_tensor(h.lr, dtype=dtype).to(device).reshape(())
    gamma = torch.as_tensor(h.gamma, dtype=dtype).to(device).reshape(())
    if trust is not None:
        trust = trust.to(device, dtype)
        lr, gamma = lr * trust, gamma * trust
    if not h.decoupled:
        return torch.stack([torch.zeros_like(gamma), gamma], -1)
    r1 = gamma / (1 - lr * h.weight_decay - gamma * h.weight_decay)
    return torch.stack([h.weight_decay * r1, r1], -1)


def record(phase: Phase, b: Bucket, h: AdamHyper, found_inf: Tensor | None, trust: Tensor | None = None) -> None:
    """After an anchor-free update: each parameter's (r0, r1) for the next one to recover its anchor (`trust`:
    LAMB's ratios of this update). A skipped update (found_inf) left x as it was, and so the weights. Device
    tensors only: no host sync."""
    if not recovers(phase, b, h) or not b.last_gammas:
        return
    olds = b.last_gammas
    new = weights(h, olds[0].dtype, olds[0].device, trust).expand(len(olds), 2)
    if found_inf is not None:
        new = torch.where(found_inf.reshape(()).to(new.device) != 0, torch.stack(olds), new)
    torch._foreach_copy_(olds, list(new.unbind()))


def last_corrections(t: int, h: AdamHyper) -> tuple[float, float]:
    """1 - b1^t and sqrt(1 - b2^t) of the update t that made x (1 and 1 at t = 0, where r is 0, and without
    bias correction): a_t's divisors."""
    if not h.bias_correction or t <= 0:
        return 1.0, 1.0
    b1, b2 = (float(beta) for beta in h.betas)
    return 1 - b1**t, math.sqrt(1 - b2**t)


def recovered_all(xs, ms, seconds, rs, steps: list[int], h: AdamHyper) -> list[Tensor]:
    """recovered() of every tensor of a bucket in _foreach ops, the same ops in the same order (the foreach
    backend: a few passes over the lists, not a dozen per tensor). With eps > 0, a is finite, and where the
    weights are 0 x + 0 * x + 0 * a is x exactly; eps = 0 needs recovered()'s guard against 0 / 0."""
    if ms and ms[0].dtype != xs[0].dtype:  # (16-bit moments: a in x's precision, as the kernels compute it)
        ms, seconds = [m.to(xs[0].dtype) for m in ms], [v.to(xs[0].dtype) for v in seconds]
    if h.eps == 0:
        return [recovered(*args, h) for args in zip(xs, ms, seconds, rs, steps)]
    bias1, bias2_sqrt = zip(*(last_corrections(t, h) for t in steps))
    a = torch._foreach_div(ms, list(bias1))
    denominators = torch._foreach_sqrt(seconds)
    torch._foreach_div_(denominators, list(bias2_sqrt))
    torch._foreach_add_(denominators, h.eps)
    torch._foreach_div_(a, denominators)
    s = torch._foreach_add(xs, torch._foreach_mul(xs, [r[0] for r in rs]))
    torch._foreach_add_(s, torch._foreach_mul(a, [r[1] for r in rs]))
    return s


def recovered(x: Tensor, m: Tensor, second: Tensor, r: Tensor, t: int, h: AdamHyper) -> Tensor:
    """s_t from x_t, the moments update t stored (`second`: v, or v_max with amsgrad) and its (r0, r1); x itself
    where r1 is 0 (a fresh or written x, where a may be 0 / 0 with eps 0). No host sync."""
    bias1, bias2_sqrt = last_corrections(t, h)
    m, second = m.to(x.dtype), second.to(x.dtype)  # (16-bit moments: a in x's precision)
    a = (m / bias1) / (second.sqrt() / bias2_sqrt + h.eps)
    return torch.where(r[1] != 0, x + r[0] * x + r[1] * a, x)
