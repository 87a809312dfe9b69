"""Behaviour, not only agreement: every mode converges on a convex quadratic; on the bilinear saddle
min_x max_y x*y, simultaneous gradient descent-ascent diverges while two-phase EXTRAP-SGD (the
extragradient method, gamma = lr) converges to (0, 0)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek

ALL = CPU_BACKENDS + ["reference"]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize(
    "mode, extra",
    [
        ("past", {}),
        ("past", {"past": "grad"}),
        ("local", {}),
        ("noise", {"noise_std": 1e-3}),
        ("local", {"extrapolate_with_momentum": True}),
    ],
)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_quadratic_converges(backend, mode, extra, momentum):
    torch.manual_seed(0)
    curvature = torch.linspace(0.1, 1.0, 50)
    target = torch.randn(50)
    x = torch.nn.Parameter(torch.zeros(50))
    opt = ek.ExtrapSGD([x], lr=0.5, mode=mode, momentum=momentum, backend=backend, **extra)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (curvature * (x - target) ** 2).sum()
        loss.backward()
        return loss

    initial = float(closure().detach())
    for _ in range(300):
        opt.step(closure)
    final = float(0.5 * (curvature * (x.detach() - target) ** 2).sum())
    tolerance = 1e-2 if mode == "noise" else 1e-6  # the noise keeps x at sigma around the optimum
    assert final < tolerance * initial


def _saddle(backend, mode, lr, gamma, steps):
    """|(x, y)| after `steps` iterations on min_x max_y x*y from (1, 1); y's group maximizes."""
    x = torch.nn.Parameter(torch.tensor([1.0]))
    y = torch.nn.Parameter(torch.tensor([1.0]))
    opt = ek.ExtrapSGD(
        [{"params": [x]}, {"params": [y], "maximize": True}], lr=lr, gamma=gamma, mode=mode, backend=backend
    )

    def closure():
        opt.zero_grad()
        loss = (x * y).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return math.hypot(float(x.detach()), float(y.detach()))


@pytest.mark.parametrize("backend", ALL)
def test_bilinear_saddle(backend):
    lr, start = 0.3, math.hypot(1.0, 1.0)
    # gamma = 0 is simultaneous gradient descent-ascent: |z| grows by sqrt(1 + lr^2) per step (x74 in 100).
    assert _saddle(backend, "past", lr, 0.0, 100) > 10 * start
    # Two-phase extrapolation is the extragradient method: |z| shrinks by sqrt(1 - lr^2 + lr^4) per step
    # (x3e-6 in 300).
    assert _saddle(backend, "local", lr, lr, 300) < 1e-3 * start
