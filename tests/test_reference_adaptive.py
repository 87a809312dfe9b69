"""The oracle of the adaptive bases (extrap_kernels/reference_adaptive.py) against what SPEC says they
are: gamma = 0 is torch.optim.Adam / AdamW; LAMB is Apex's FusedLAMB, written here independently in
Apex's two stages; and the extrapolation modes relate x to the anchor as SPEC's iterations say."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from extrap_kernels import philox
from extrap_kernels import reference_adaptive as ra

SIZES = [1, 7, 64, 300]
STEPS = 25


def _grads(gen, step):
    return [torch.randn(n, generator=gen, dtype=torch.float64) * (1 + step % 3) for n in SIZES]


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen, dtype=torch.float64) for n in SIZES], gen


@pytest.mark.parametrize("adamw, amsgrad, maximize, weight_decay",
                         list(itertools.product([False, True], [False, True], [False, True], [0.0, 0.05])))
def test_gamma_zero_is_torch_adam(adamw, amsgrad, maximize, weight_decay):
    xs, gen = _params()
    theirs = [torch.nn.Parameter(x.clone()) for x in xs]
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = cls(theirs, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay, amsgrad=amsgrad,
              maximize=maximize, foreach=False)
    h = ra.AdaptiveHyper(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay, decoupled=adamw,
                         amsgrad=amsgrad, maximize=maximize, gamma=0.0)
    states = [{} for _ in xs]
    for step in range(STEPS):
        gs = _grads(gen, step)
        for p, g in zip(theirs, gs):
            p.grad = g.clone()
        opt.step()
        ra.step(xs, gs, states, list(range(len(xs))), h)
        for i, (x, p) in enumerate(zip(xs, theirs)):
            torch.testing.assert_close(x, p.detach(), rtol=1e-12, atol=1e-14, msg=f"step {step} param {i}")
            torch.testing.assert_close(states[i]["exp_avg_sq"], opt.state[p]["exp_avg_sq"], rtol=1e-12, atol=0)


def _apex_lamb(xs, gs, state, lr, betas, eps, weight_decay, adam_w_mode, grad_averaging, max_grad_norm,
               use_nvlamb, bias_correction):
    """Apex's FusedLAMB step as its two kernels do it: stage 1 clips by the global norm and forms the
    update; stage 2 scales lr by the trust ratio ||p|| / ||update||."""
    b1, b2 = betas
    norm = math.sqrt(sum(float((g * g).sum()) for g in gs))
    clipped = norm / max_grad_norm if max_grad_norm > 0 and norm > max_grad_norm else 1.0
    beta3 = 1 - b1 if grad_averaging else 1.0
    state["step"] = state.get("step", 0) + 1
    t = state["step"]
    bc1, bc2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
    for i, (p, g) in enumerate(zip(xs, gs)):
        m, v = state.setdefault(("m", i), torch.zeros_like(p)), state.setdefault(("v", i), torch.zeros_like(p))
        g = g / clipped
        if not adam_w_mode:
            g = g + weight_decay * p
        m.mul_(b1).add_(beta3 * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        update = (m / bc1) / ((v / bc2).sqrt() + eps)
        if adam_w_mode:
            update = update + weight_decay * p
        ratio = lr
        if use_nvlamb or weight_decay != 0:
            p_norm, u_norm = float(p.norm()), float(update.norm())
            if p_norm != 0 and u_norm != 0:
                ratio = lr * p_norm / u_norm
        p.sub_(ratio * update)


@pytest.mark.parametrize("weight_decay, adam_w_mode, grad_averaging, max_grad_norm, use_nvlamb, bias_correction",
                         [(0.01, True, True, 1.0, False, True), (0.0, True, True, 1.0, False, True),
                          (0.0, True, True, 0.0, True, True), (0.01, False, False, 5.0, False, False),
                          (0.1, True, False, 1e3, True, True)])
def test_gamma_zero_lamb_is_apex_lamb(weight_decay, adam_w_mode, grad_averaging, max_grad_norm, use_nvlamb,
                                      bias_correction):
    xs, gen = _params(1)
    theirs = [x.clone() for x in xs]
    h = ra.AdaptiveHyper(lr=0.02, eps=1e-6, weight_decay=weight_decay, decoupled=adam_w_mode, lamb=True,
                         grad_averaging=grad_averaging, max_grad_norm=max_grad_norm, use_nvlamb=use_nvlamb,
                         bias_correction=bias_correction, gamma=0.0)
    states, apex_state = [{} for _ in xs], {}
    for step in range(STEPS):
        gs = _grads(gen, step)
        _apex_lamb(theirs, gs, apex_state, 0.02, (0.9, 0.999), 1e-6, weight_decay, adam_w_mode, grad_averaging,
                   max_grad_norm, use_nvlamb, bias_correction)
        ra.step(xs, gs, states, list(range(len(xs))), h)
        for i, (x, p) in enumerate(zip(xs, theirs)):
            torch.testing.assert_close(x, p, rtol=1e-11, atol=1e-13, msg=f"step {step} param {i}")


@pytest.mark.parametrize("lamb", [False, True])
@pytest.mark.parametrize("mode", ["past", "noise"])
def test_one_phase_modes_keep_the_base_trajectory_on_the_anchor(mode, lamb):
    """Given the same gradients, the anchor follows the base optimizer whatever gamma; x is s - gamma * e
    (past, e the direction just applied) or s + sigma * xi (noise)."""
    xs, gen = _params(2)
    base = [x.clone() for x in xs]
    common = dict(lr=0.01, weight_decay=0.01, decoupled=True, lamb=lamb, amsgrad=not lamb)
    h = ra.AdaptiveHyper(**common, mode=mode, gamma=0.3, noise_std=0.01, seed=9)
    h0 = ra.AdaptiveHyper(**common, gamma=0.0)
    states, base_states = [{} for _ in xs], [{} for _ in xs]
    for step in range(STEPS):
        gs = _grads(gen, step)
        ra.step(xs, gs, states, list(range(len(xs))), h)
        ra.step(base, gs, base_states, list(range(len(xs))), h0)
        for i, (x, b, st) in enumerate(zip(xs, base, states)):
            torch.testing.assert_close(st["anchor"], b, rtol=0, atol=0)
            if mode == "past":
                e = (b_prev[i] - b) / 0.01 if step else None
                if e is not None:  # s_new = s_old - lr * e  =>  x = s_new - gamma * e
                    torch.testing.assert_close(x, b - 0.3 * e, rtol=1e-9, atol=1e-12)
            else:
                xi = philox.normal(9, step + 1, i, x.numel(), x.device).double()
                torch.testing.assert_close(x, b + 0.01 * xi, rtol=1e-12, atol=1e-14)
        b_prev = [b.clone() for b in base]


@pytest.mark.parametrize("lamb", [False, True])
def test_local_extrapolates_along_the_look_ahead_direction(lamb):
    """Mode "local": extrapolate() reads the state and stores only the snapshot; with gamma = lr and the
    same gradient, the extrapolated point is exactly where the step then lands (the look-ahead direction
    IS the direction of that step). The step updates from the snapshot, not from the extrapolated x."""
    xs, gen = _params(3)
    h = ra.AdaptiveHyper(lr=0.01, weight_decay=0.01, decoupled=True, lamb=lamb, mode="local", gamma=None)
    states = [{} for _ in xs]
    for step in range(STEPS):
        gs = _grads(gen, step)
        before = [{k: v.clone() for k, v in st.items()} for st in states]
        snapshot = [x.clone() for x in xs]
        ra.extrapolate(xs, gs, states, h)
        for st, old, x in zip(states, before, snapshot):
            assert all(torch.equal(st[k], v) for k, v in old.items() if k != "anchor")
            assert torch.equal(st["anchor"], x)
        extrapolated = [x.clone() for x in xs]
        ra.step(xs, gs, states, list(range(len(xs))), h)
        for x, e in zip(xs, extrapolated):
            torch.testing.assert_close(x, e, rtol=0, atol=0)
