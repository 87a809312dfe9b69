"""Adagrad (docs/SPEC.md "Adagrad"): ExtrapAdagrad with gamma = 0 is torch.optim.Adagrad, FusedAdagrad is Apex's
FusedAdagrad (written here independently from Apex's kernel: both weight-decay modes), on every backend that
runs here; the look-ahead of mode "local" reads the next step's lr decay; the errors are torch's words; and the
kernels refuse an accumulating launch that is not Adagrad. (The modes, checkpoints (torch.optim.Adagrad's too)
and found_inf of the adaptive family: tests/test_adaptive.py; one launch against the float64 reference at random
shapes and options: tests/test_adaptive_kernels.py.)"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from conftest import CPU_BACKENDS
from test_adaptive import BACKENDS, _in_lockstep, _params, _set_grads

import extrap_kernels as ek


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "lr_decay, weight_decay, initial_accumulator_value, maximize",
    list(itertools.product([0.0, 0.05], [0.0, 0.03], [0.0, 0.5], [False, True])),
)
def test_gamma_zero_is_torch_adagrad(backend, lr_decay, weight_decay, initial_accumulator_value, maximize):
    ours, gen = _params(1)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = dict(
        lr=0.05,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=1e-6,
        maximize=maximize,
    )
    opt = ek.ExtrapAdagrad(ours, gamma=0.0, backend=backend, **kwargs)
    torch_opt = torch.optim.Adagrad(theirs, foreach=False, **kwargs)
    for step in _in_lockstep(ours, theirs, opt, torch_opt, gen):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14, msg=f"step {step} param {i}")
            torch.testing.assert_close(opt.state[p]["sum"], torch_opt.state[q]["sum"], rtol=1e-12, atol=0)
    assert set(opt.state[ours[0]]) == {"sum", "step", "anchor"}  # (past mode's anchor; no first moment)


def apex_adagrad(xs, gs, sums, lr, eps, weight_decay, adagrad_w_mode):
    """Apex's FusedAdagrad step as its kernel does it, per element: mode 0 (L2) adds wd * p to the gradient
    before the sum; mode 1 (adagrad_w_mode) adds wd * p to the update."""
    for p, g, h in zip(xs, gs, sums):
        if not adagrad_w_mode:
            g = g + weight_decay * p
        h.add_(g * g)
        update = g / (h.sqrt() + eps)
        if adagrad_w_mode:
            update = update + weight_decay * p
        p.sub_(lr * update)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adagrad_w_mode", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_fused_adagrad_is_apex_fused_adagrad(backend, adagrad_w_mode, dtype):
    """Apex's defaults (lr 1e-2, eps 1e-10) and both weight-decay modes, within a few roundings of the dtype
    per step; no step count enters (Apex keeps none), and set_grad_none zeroes to None."""
    ours, gen = _params(2, dtype)
    theirs = [p.detach().clone() for p in ours]
    sums = [torch.zeros_like(p) for p in theirs]
    opt = ek.FusedAdagrad(ours, weight_decay=0.02, adagrad_w_mode=adagrad_w_mode, backend=backend)
    assert opt.defaults["lr"] == 1e-2 and opt.defaults["eps"] == 1e-10
    rtol = 64 * torch.finfo(dtype).eps
    for step in range(20):
        _set_grads(ours, gen, step)
        opt.step()
        apex_adagrad(theirs, [p.grad for p in ours], sums, 1e-2, 1e-10, 0.02, adagrad_w_mode)
        for i, (p, q) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(p.detach(), q, rtol=rtol, atol=rtol, msg=f"step {step} param {i}")
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_local_look_ahead_reads_the_next_steps_lr_decay(backend):
    """With gamma = lr and the same gradient, the extrapolated point is exactly where the step then lands, lr
    decay included: the look-ahead is step t + 1's (one at step t would move 1.5 / 1.4 as far at t = 5, 7%
    of the move, where the tolerance is 1e-14 of x)."""
    ours, gen = _params(4)
    opt = ek.ExtrapAdagrad(ours, lr=0.05, lr_decay=0.1, mode="local", backend=backend)
    for step in range(6):
        _set_grads(ours, gen, step)
        before = [p.detach().clone() for p in ours]
        opt.extrapolate()  # (the same gradients then go to the step)
        extrapolated = [p.detach().clone() for p in ours]
        opt.step()
        for p, x, s in zip(ours, extrapolated, before):
            assert (x - s).abs().max() > 1e-4  # (it moved)
            torch.testing.assert_close(p.detach(), x, rtol=1e-14, atol=1e-15)


def test_errors_are_torch_words():
    p = [torch.nn.Parameter(torch.ones(3))]
    for name in ("lr_decay", "initial_accumulator_value"):
        with pytest.raises(ValueError, match=f"Invalid {name} value: -1"):
            ek.ExtrapAdagrad(p, **{name: -1})
    with pytest.raises(ValueError, match="Invalid epsilon value: -1"):
        ek.FusedAdagrad(p, eps=-1)
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        ek.ExtrapAdagrad(p, lr=-0.1)
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        ek.FusedAdagrad(p, weight_decay=-1)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpu", "cuda")])  # their C++ checks
def test_kernels_refuse_an_accumulating_launch_that_is_not_adagrad(backend):
    """The operators' own checks: an Adagrad launch with Adam's betas, or with a first moment, is refused
    before anything is written."""
    p = [torch.nn.Parameter(torch.ones(5))]
    opt = ek.ExtrapAdagrad(p, backend=backend)
    p[0].grad = torch.ones(5)
    opt.step()
    state = opt.state[p[0]]
    bucket = ek.bucket.Bucket(
        params=[p[0].detach()],
        grads=[p[0].grad],
        anchors=[state["anchor"]],
        momenta=[],
        steps=[state["step"]],
        indices=[0],
        second_moments=[state["sum"]],
    )
    good = opt.launch_args(opt.param_groups[0])[1]
    before = p[0].detach().clone(), state["sum"].clone()
    for bad, kwargs in (
        (ek.hyper.AdagradHyper(lr=0.1, betas=(0.9, 0.999)), {}),
        (good, {"momenta": [torch.zeros(5)]}),
    ):
        with pytest.raises(ValueError, match="accumulat"):
            ek.backends.BACKENDS[backend].apply(ek.bucket.Phase.UPDATE_PAST, dataclasses.replace(bucket, **kwargs), bad)
    assert torch.equal(p[0].detach(), before[0]) and torch.equal(state["sum"], before[1])
    ek.backends.BACKENDS[backend].apply(ek.bucket.Phase.UPDATE_PAST, bucket, good)  # (the control: it runs)
    assert not torch.equal(p[0].detach(), before[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_functional_form_is_torch_adagrad(backend):
    """functional.adagrad over caller-owned state (torch.optim.Adagrad's "sum" and count), mode None: the
    optimizer's step, as torch.optim.Adagrad takes it."""
    ours, gen = _params(6)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = dict(lr=0.05, lr_decay=0.02, weight_decay=0.01, eps=1e-6)
    torch_opt = torch.optim.Adagrad(theirs, initial_accumulator_value=0.2, foreach=False, **kwargs)
    sums = [torch.full_like(p, 0.2) for p in ours]
    steps = [torch.tensor(0.0) for _ in ours]
    for step in range(5):
        _set_grads(ours, gen, step)
        for p, q in zip(ours, theirs):
            q.grad = p.grad.clone()
        ek.functional.adagrad(ours, [p.grad for p in ours], sums, steps, mode=None, backend=backend, **kwargs)
        torch_opt.step()
    for p, q, s in zip(ours, theirs, sums):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s, torch_opt.state[q]["sum"], rtol=1e-12, atol=0)
    assert all(float(t) == 5 for t in steps)
