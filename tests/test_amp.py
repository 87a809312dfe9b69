"""AMP: grad_scale gives the unscaled result; found_inf skips the whole update and leaves every
tensor of the optimizer bit-identical; GradScaler drives step() through its attribute protocol."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS, trajectory_tolerance

import extrap_kernels as ek

ALL = CPU_BACKENDS + ["reference"]


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in (1, 33, 65539)]


def _set_grads(params, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * scale).to(p.dtype)


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


def _assert_same(before, after, scratch=()):
    """Parameters and every state tensor bit-identical, except keys listed in `scratch`."""
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    assert before[1].keys() == after[1].keys()
    for key in before[1]:
        assert before[1][key].keys() == after[1][key].keys()
        for name, value in before[1][key].items():
            if name not in scratch:
                assert torch.equal(value, after[1][key][name]), name


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize(
    "mode, lars",
    [("past", True), ("past", False), ("local", True), ("noise", True)],
    ids=["past", "past-anchor-free", "local", "noise"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_found_inf_changes_nothing(backend, mode, lars, dtype):
    """(Without LARS, past mode on fp32 keeps no anchor: its last_gamma must not move either.)"""
    params = _params(dtype)
    opt = ek.ExtrapSGD(params, lr=0.1, gamma=0.05, mode=mode, momentum=0.9, lars=lars, backend=backend)
    for step in range(3):  # some history first, then a skipped iteration
        _set_grads(params, step)
        if mode == "local":
            opt.extrapolate()
            _set_grads(params, step + 100)
        opt.step()
    before = _snapshot(opt, params)
    inf = torch.tensor([1.0])
    _set_grads(params, 7)
    params[1].grad[3] = float("inf")
    if mode == "local":
        opt.extrapolate(found_inf=inf)
        params[1].grad[4] = float("nan")
    opt.step(found_inf=inf)
    # A full-precision parameter in mode "local" is its own anchor between iterations; its "anchor"
    # state is the snapshot scratch of the half-step, retaken by every extrapolate().
    scratch = ("anchor",) if mode == "local" and dtype == torch.float32 else ()
    _assert_same(before, _snapshot(opt, params), scratch)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("mode", ["past", "local"])
def test_grad_scale_gives_the_unscaled_result(backend, mode):
    scaled, plain = _params(torch.float32), _params(torch.float32)
    kwargs = dict(lr=0.1, mode=mode, momentum=0.9, weight_decay=1e-3, lars=True, backend=backend)
    opt_scaled, opt_plain = ek.ExtrapSGD(scaled, **kwargs), ek.ExtrapSGD(plain, **kwargs)
    scale = torch.tensor(4096.0)
    for step in range(10):
        for phase in range(2 if mode == "local" else 1):
            _set_grads(scaled, 10 * step + phase, scale=4096.0)
            _set_grads(plain, 10 * step + phase)
            if phase == 0 and mode == "local":
                opt_scaled.extrapolate(grad_scale=scale)
                opt_plain.extrapolate()
            else:
                opt_scaled.step(grad_scale=scale)
                opt_plain.step()
    tol = trajectory_tolerance(torch.float32, 10, 5.0, 0.9)
    for a, b in zip(scaled, plain):
        torch.testing.assert_close(a.detach(), b.detach(), atol=tol, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_grad_scaler_protocol(backend):
    """torch.amp.GradScaler hands grad_scale/found_inf to step(); an inf iteration is skipped."""
    model = torch.nn.Linear(4, 2)
    opt = ek.ExtrapSGD(model.parameters(), lr=0.1, momentum=0.9, backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x = torch.randn(8, 4)
    scaler.scale(model(x).pow(2).mean()).backward()
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert all(moved)
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean() * float("inf")).backward()
    before = _snapshot(opt, list(model.parameters()))
    scaler.step(opt)
    scaler.update()
    _assert_same(before, _snapshot(opt, list(model.parameters())))
    assert scaler.get_scale() == 128.0
