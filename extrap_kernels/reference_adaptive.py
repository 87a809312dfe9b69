"""The oracle for the adaptive bases: docs/SPEC.md "Base update, Adam family and LAMB" written as
per-tensor torch ops, with every mode (local, past, noise) and option.

As `reference.py` is for the SGD family, this is slow on purpose and the thing the Adam and LAMB kernels
will be tested against; `compute_dtype=torch.float64` evaluates in double precision and rounds only
when storing. It works on one param group: its parameters `xs`, their gradients `gs` and one state dict
per parameter, with torch.optim.Adam's names (`step`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) plus
`anchor` (s, x_t: the fp32 master of a 16-bit parameter), created on first use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import philox
from .bucket import state_dtype


@dataclass(frozen=True)
class AdaptiveHyper:
    """One param group of ExtrapAdam / ExtrapAdamW / ExtrapLAMB (FusedAdam and FusedLAMB map onto it)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False  # AdamW / adam_w_mode: e = a + wd * s, not g' += wd * s
    amsgrad: bool = False
    bias_correction: bool = True
    maximize: bool = False
    lamb: bool = False
    grad_averaging: bool = True  # LAMB: m <- b1 * m + (1 - b1) * g' (False: + g')
    max_grad_norm: float = 0.0  # LAMB: g' / max(1, ||g||_global / max_grad_norm); 0: no clipping
    use_nvlamb: bool = False  # LAMB: the trust ratio also where wd == 0
    mode: str = "past"  # "past", "local" or "noise"
    gamma: float | None = None  # None: gamma = lr
    noise_std: float = 0.0
    seed: int = 0

    @property
    def extrapolation_rate(self) -> float:
        return self.lr if self.gamma is None else self.gamma


def _state(x: Tensor, state: dict, h: AdaptiveHyper) -> dict:
    if "step" not in state:
        sd = state_dtype(x.dtype)
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(x, dtype=sd)
        state["exp_avg_sq"] = torch.zeros_like(x, dtype=sd)
        state["anchor"] = x.detach().to(sd, copy=True)
        if h.amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(x, dtype=sd)
    return state


def global_grad_norm(gs: list[Tensor], inv_scale: float = 1.0) -> float:
    """||g||_global: the norm of all the optimizer's gradients together, unscaled (LAMB's clipping)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(g.double()) ** 2) for g in gs)) * inv_scale


def regularized_grad(g: Tensor, s: Tensor, h: AdaptiveHyper, inv_scale: float, clip: float) -> Tensor:
    """g' = g * grad_scale_inv (maximize: -g), LAMB: divided by `clip` = max(1, ||g|| / max_grad_norm);
    L2 decay (not decoupled): g' += wd * s."""
    g = g * inv_scale / clip
    if h.maximize:
        g = -g
    if h.weight_decay != 0 and not h.decoupled:
        g = g + h.weight_decay * s
    return g


def moments(m: Tensor, v: Tensor, v_max: Tensor | None, g_prime: Tensor, h: AdaptiveHyper):
    """m <- b1 * m + (1 - b1) * g' (LAMB without grad_averaging: + g'); v <- b2 * v + (1 - b2) * g'^2;
    amsgrad: v_max <- max(v_max, v). Returns the new (m, v, v_max), storing nothing."""
    b1, b2 = h.betas
    m = b1 * m + ((1 - b1) if (h.grad_averaging or not h.lamb) else 1.0) * g_prime
    v = b2 * v + (1 - b2) * g_prime * g_prime
    if v_max is not None:
        v_max = torch.maximum(v_max, v)
    return m, v, v_max


def direction(s: Tensor, m: Tensor, v: Tensor, v_max: Tensor | None, t: int, h: AdaptiveHyper) -> Tensor:
    """e, the direction of the update s <- s - eta * e, from the moments after step t:
    a = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps) (bias_correction=False: no divisions), v_max
    in place of v with amsgrad; Adam: e = a; AdamW: e = a + wd * s; LAMB: u = a (+ wd * s decoupled),
    e = trust * u, trust = ||s|| / ||u|| (1 where either is 0; only where wd != 0 unless use_nvlamb)."""
    b1, b2 = h.betas
    second = v_max if v_max is not None else v
    if h.bias_correction:
        a = (m / (1 - b1 ** t)) / (second.sqrt() / math.sqrt(1 - b2 ** t) + h.eps)
    else:
        a = m / (second.sqrt() + h.eps)
    e = a + h.weight_decay * s if h.decoupled else a
    if h.lamb and (h.weight_decay != 0 or h.use_nvlamb):
        s_norm, u_norm = torch.linalg.vector_norm(s), torch.linalg.vector_norm(e)
        trust = torch.where((s_norm > 0) & (u_norm > 0), s_norm / u_norm, torch.ones_like(s_norm))
        e = trust * e
    return e


def _clip(gs: list[Tensor], h: AdaptiveHyper, inv_scale: float) -> float:
    if not h.lamb or h.max_grad_norm <= 0:
        return 1.0
    return max(1.0, global_grad_norm(gs, inv_scale) / h.max_grad_norm)


def extrapolate(xs: list[Tensor], gs: list[Tensor], states: list[dict], h: AdaptiveHyper,
                grad_scale: float | None = None, compute_dtype: torch.dtype | None = None) -> None:
    """Mode "local", step 2: s <- x; x <- s - gamma * e~, e~ the look-ahead direction: the moments AS IF
    updated with this gradient at step t + 1, nothing stored (the state is read only)."""
    inv_scale = 1.0 / grad_scale if grad_scale else 1.0
    clip = _clip(gs, h, inv_scale)
    for x, g, state in zip(xs, gs, states):
        state = _state(x, state, h)
        cd = compute_dtype or state_dtype(x.dtype)
        master = state["anchor"].dtype != x.dtype  # a 16-bit x: its fp32 master is the anchor
        s = state["anchor"].to(cd) if master else x.detach().to(cd)
        g_prime = regularized_grad(g.to(cd), s, h, inv_scale, clip)
        v_max = state["max_exp_avg_sq"].to(cd) if h.amsgrad else None
        m, v, v_max = moments(state["exp_avg"].to(cd), state["exp_avg_sq"].to(cd), v_max, g_prime, h)
        e = direction(s, m, v, v_max, int(state["step"]) + 1, h)
        if not master:
            state["anchor"].copy_(s)
        x.detach().copy_(s - h.extrapolation_rate * e)


def step(xs: list[Tensor], gs: list[Tensor], states: list[dict], indices: list[int], h: AdaptiveHyper,
         grad_scale: float | None = None, compute_dtype: torch.dtype | None = None) -> None:
    """The base update of each anchor s with its gradient (taken at the current x), then x from s: mode
    "local" (step 4) x <- s; "past" x <- s - gamma * e, e the direction just applied; "noise"
    x <- s + sigma * xi (Philox, keyed by seed, step, the parameter's index and the element).
    gamma = 0 is the base optimizer itself."""
    inv_scale = 1.0 / grad_scale if grad_scale else 1.0
    clip = _clip(gs, h, inv_scale)
    for x, g, state, index in zip(xs, gs, states, indices):
        state = _state(x, state, h)
        cd = compute_dtype or state_dtype(x.dtype)
        s = state["anchor"].to(cd)  # x_t: as last stored, or ("local") the snapshot extrapolate() took
        state["step"] += 1
        t = int(state["step"])
        g_prime = regularized_grad(g.to(cd), s, h, inv_scale, clip)
        v_max = state["max_exp_avg_sq"].to(cd) if h.amsgrad else None
        m, v, v_max = moments(state["exp_avg"].to(cd), state["exp_avg_sq"].to(cd), v_max, g_prime, h)
        e = direction(s, m, v, v_max, t, h)
        s = s - h.lr * e
        state["exp_avg"].copy_(m)
        state["exp_avg_sq"].copy_(v)
        if v_max is not None:
            state["max_exp_avg_sq"].copy_(v_max)
        state["anchor"].copy_(s)
        if h.mode == "local":
            x.detach().copy_(s)
        elif h.mode == "past":
            x.detach().copy_(s - h.extrapolation_rate * e)
        elif h.mode == "noise":
            xi = philox.normal(h.seed, t, index, x.numel(), x.device).view_as(x)
            x.detach().copy_(s + h.noise_std * xi.to(cd))
        else:
            raise ValueError(f"unknown mode {h.mode!r}")
