"""gamma = 0 is exactly the base optimizer: ExtrapSGD (every mode) and FusedSGD against
torch.optim.SGD for each of its option combinations, within fp32 rounding."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import CPU_BACKENDS, TRITON_INTERPRETED, assert_within, output_ulp, steps_for, trajectory_tolerance

import extrap_kernels as ek

STEPS = 25
SGD_OPTIONS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 1e-2], [False, True])
    if not (n and (m == 0 or d != 0))
]


def _run_pair(make_ours, options, shapes=((3, 5), (1,), (65537,), (0,)), dtype=torch.float32, seed=0, steps=STEPS):
    gen = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = make_ours(ours)
    sgd = torch.optim.SGD(theirs, lr=0.05, **options)
    for _ in range(steps):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            q.grad = p.grad.clone()
        if getattr(opt, "local_groups", lambda: [])():
            opt.extrapolate()
        opt.step()
        sgd.step()
    return opt, sgd, ours, theirs


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("mode", ["past", "local", "noise"])
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gamma_zero_is_torch_sgd(backend, mode, options):
    steps = steps_for(backend, STEPS)
    opt, sgd, ours, theirs = _run_pair(
        lambda ps: ek.ExtrapSGD(ps, lr=0.05, gamma=0.0, mode=mode, backend=backend, **options), options, steps=steps
    )
    magnitude = max(float(q.detach().abs().max()) for q in theirs if q.numel()) + 5.0
    tol = trajectory_tolerance(torch.float32, steps, magnitude, options["momentum"])
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), atol=tol, rtol=0)
        if options["momentum"]:
            torch.testing.assert_close(
                opt.state[p]["momentum_buffer"], sgd.state[q]["momentum_buffer"], atol=tol, rtol=0
            )


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize(
    "options",
    [o for o in SGD_OPTIONS if not o["maximize"]],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items() if k != "maximize"),
)
def test_fused_sgd_is_torch_sgd(backend, options):
    apex_options = {k: v for k, v in options.items() if k != "maximize"}
    steps = steps_for(backend, STEPS)
    opt, sgd, ours, theirs = _run_pair(
        lambda ps: ek.FusedSGD(ps, lr=0.05, backend=backend, **apex_options), options, steps=steps
    )
    magnitude = max(float(q.detach().abs().max()) for q in theirs if q.numel()) + 5.0
    tol = trajectory_tolerance(torch.float32, steps, magnitude, options["momentum"])
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), atol=tol, rtol=0)
        assert "anchor" not in opt.state[p]  # full precision: the parameter is its own anchor


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fused_sgd_wd_after_momentum(backend):
    """Apex's option: d = m (+ nesterov) then d += wd * p; checked against the same loop by hand."""
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(1000, generator=gen))
    x, buf = p.detach().clone(), None
    opt = ek.FusedSGD([p], lr=0.1, momentum=0.9, weight_decay=0.05, wd_after_momentum=True, backend=backend)
    for _ in range(STEPS):
        g = torch.randn(1000, generator=gen)
        p.grad = g.clone()
        opt.step()
        buf = g.clone() if buf is None else 0.9 * buf + g
        x = x - 0.1 * (buf + 0.05 * x)
    torch.testing.assert_close(p.detach(), x, atol=trajectory_tolerance(torch.float32, STEPS, 10.0, 0.9), rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fused_sgd_bf16_keeps_fp32_master(backend):
    """16-bit parameters: the update happens on the fp32 master; the bf16 parameter is its rounding."""
    gen = torch.Generator().manual_seed(4)
    master = torch.randn(4097, generator=gen)
    p = torch.nn.Parameter(master.to(torch.bfloat16))
    opt = ek.FusedSGD([p], lr=1e-3, momentum=0.9, backend=backend)
    exact = p.detach().float().clone()
    sgd_ref = torch.nn.Parameter(exact.clone())
    sgd = torch.optim.SGD([sgd_ref], lr=1e-3, momentum=0.9)
    for _ in range(STEPS):
        g = torch.randn(4097, generator=gen).to(torch.bfloat16)
        p.grad, sgd_ref.grad = g, g.float()
        opt.step()
        sgd.step()
    torch.testing.assert_close(
        opt.state[p]["anchor"], sgd_ref.detach(), atol=trajectory_tolerance(torch.bfloat16, STEPS, 5.0, 0.9), rtol=0
    )
    rounded = opt.state[p]["anchor"].to(torch.bfloat16)
    if backend == "triton" and TRITON_INTERPRETED:  # the interpreter truncates fp32 -> bf16
        assert_within(p.detach(), rounded, output_ulp(torch.bfloat16, rounded), "bf16 parameter")
    else:
        assert torch.equal(p.detach(), rounded)
