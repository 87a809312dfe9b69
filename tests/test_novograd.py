"""NovoGrad (docs/SPEC.md "NovoGrad"): FusedNovoGrad is Apex's (written here independently from its
multi_tensor_novograd kernel and the norm blend before it) for every option, ExtrapNovoGrad with gamma = 0 is
the same update and its modes relate x to the anchor as SPEC says, foreach equals the reference, Apex's
checkpoints (the norms in the group) load, and the kernels refuse bad state. On every backend: the reference,
foreach and the kernels (cpu, the CUDA launcher's host emulation, Triton's interpreter); tests/test_novograd_kernels.py
checks each kernel's one phase against the float64 reference."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from conftest import CPU_BACKENDS
from test_adaptive import BACKENDS, _in_lockstep, _params, _set_grads, trajectory_against_reference

import extrap_kernels as ek


def apex_novograd(ps, gs, ms, state, lr, betas, eps, wd, reg_inside_moment, grad_averaging, norm_type, init_zero, bc):
    """One FusedNovoGrad step as Apex takes it: the group's count, each tensor's norm (the first step's, or
    0 with init_zero, before the first blend), blended, then the kernel's moment mode 1 (default) or 0."""
    b1, b2 = betas
    state["step"] = t = state.get("step", 0) + 1
    n = [float(g.norm()) if norm_type == 2 else float(g.abs().max()) for g in gs]
    old = state.setdefault("norms", [0.0] * len(gs) if init_zero else list(n))
    if norm_type == 2:
        state["norms"] = [math.sqrt(b2 * a * a + (1 - b2) * b * b) for a, b in zip(old, n)]
    else:
        state["norms"] = [b2 * a + (1 - b2) * b for a, b in zip(old, n)]
    c1, c2 = (1 - b1**t, math.sqrt(1 - b2**t)) if bc else (1.0, 1.0)
    beta3 = 1 - b1 if grad_averaging else 1.0
    for p, g, m, norm in zip(ps, gs, ms, state["norms"]):
        denom = norm / c2 + eps
        if reg_inside_moment:
            m.mul_(b1).add_(beta3 * (g / denom + wd * p))
            p.sub_(lr * m / c1)
        else:
            m.mul_(b1).add_(beta3 * g)
            p.sub_(lr * ((m / c1) / denom + wd * p))


OPTIONS = list(itertools.product([False, True], [False, True], [2, 0], [False, True], [False, True]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg_inside_moment, grad_averaging, norm_type, init_zero, bias_correction", OPTIONS)
def test_fused_novograd_is_apex_novograd(
    backend, reg_inside_moment, grad_averaging, norm_type, init_zero, bias_correction
):
    ours, gen = _params(1)
    theirs = [p.detach().clone() for p in ours]
    ms = [torch.zeros_like(p) for p in theirs]
    options = dict(
        reg_inside_moment=reg_inside_moment,
        grad_averaging=grad_averaging,
        norm_type=norm_type,
        init_zero=init_zero,
        bias_correction=bias_correction,
    )
    opt = ek.FusedNovoGrad(ours, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.02, backend=backend, **options)
    apex = {}
    for step in range(12):
        _set_grads(ours, gen, step)
        opt.step()
        apex_novograd(theirs, [p.grad for p in ours], ms, apex, 0.01, (0.8, 0.95), 1e-6, 0.02, *options.values())
        for i, (p, q) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-14, msg=f"step {step} param {i}")
    assert opt.param_groups[0]["step"] == 12
    for p, norm in zip(ours, apex["norms"]):
        assert math.isclose(float(opt.state[p]["exp_avg_sq"]), norm, rel_tol=1e-12)


def _twins(mode, backend, **kwargs):
    ours, gen = _params(2)
    base = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = ek.ExtrapNovoGrad(ours, mode=mode, gamma=0.3, noise_std=0.01, seed=9, backend=backend, **kwargs)
    return ours, base, opt, ek.FusedNovoGrad(base, backend=backend, **kwargs), gen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg_inside_moment", [False, True])
def test_past_mode_keeps_fused_novograds_trajectory_on_the_anchor(backend, reg_inside_moment):
    """Given the same gradients the anchor is FusedNovoGrad's parameter (gamma = 0 is its update), and x is
    s - gamma * e, e the direction just applied."""
    ours, base, opt, base_opt, gen = _twins(
        "past", backend, lr=0.01, weight_decay=0.01, reg_inside_moment=reg_inside_moment
    )
    previous = [p.detach().clone() for p in base]
    for step in _in_lockstep(ours, base, opt, base_opt, gen):
        for i, (p, b) in enumerate(zip(ours, base)):
            anchor = opt.state[p]["anchor"]
            torch.testing.assert_close(anchor, b.detach(), rtol=1e-13, atol=1e-15, msg=f"step {step} s {i}")
            e = (previous[i] - b.detach()) / 0.01
            torch.testing.assert_close(p.detach(), anchor - 0.3 * e, rtol=1e-9, atol=1e-12, msg=f"step {step} x {i}")
        previous = [b.detach().clone() for b in base]


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_extrapolates_along_the_look_ahead_direction(backend):
    """extrapolate() stores only the snapshot (m, the norm and the count are read); with gamma = lr and the
    same gradient, the extrapolated point is exactly where the step then lands."""
    ours, gen = _params(3)
    opt = ek.ExtrapNovoGrad(ours, lr=0.01, weight_decay=0.01, mode="local", backend=backend)
    for step in range(8):
        _set_grads(ours, gen, step)
        before = copy.deepcopy(opt.state_dict()["state"])
        opt.extrapolate()
        after = opt.state_dict()["state"]
        for i in before:
            assert all(torch.equal(after[i][k], v) for k, v in before[i].items() if k != "anchor")
        extrapolated = [p.detach().clone() for p in ours]
        opt.step()
        for p, x in zip(ours, extrapolated):
            torch.testing.assert_close(p.detach(), x, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["past", "local", "noise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_trajectory_equals_the_reference(backend, mode, dtype):
    trajectory_against_reference(backend, ek.ExtrapNovoGrad, mode, dtype, "cpu")


def test_an_apex_checkpoint_resumes_at_its_count_and_norms():
    """Apex's state dict: exp_avg per parameter, the count and the norms ([fp16 norms, fp32 norms]) in the
    group. It continues as the optimizer that saved it would: the same update as ours that stepped there."""
    ours, gen = _params(4, torch.float32)
    stepped = ek.FusedNovoGrad([torch.nn.Parameter(p.detach().clone()) for p in ours], lr=0.01)
    for step in range(3):
        for p in stepped.param_groups[0]["params"]:
            p.grad = torch.randn(p.shape, generator=gen)
        stepped.step()
    mine = stepped.state_dict()
    norms = torch.tensor([float(mine["state"][i]["exp_avg_sq"]) for i in range(len(ours))])
    apex = {
        "state": {i: {"exp_avg": s["exp_avg"].clone()} for i, s in mine["state"].items()},
        "param_groups": [dict(mine["param_groups"][0], step=3, exp_avg_sq=[torch.zeros(0), norms])],
    }
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in stepped.param_groups[0]["params"]]
    opt = ek.FusedNovoGrad(resumed, lr=0.01)
    opt.load_state_dict(apex)
    assert "exp_avg_sq" not in opt.param_groups[0]
    grads = [torch.randn(p.shape, generator=gen) for p in resumed]
    for o in (opt, stepped):
        for p, g in zip(o.param_groups[0]["params"], grads):
            p.grad = g.clone()
        o.step()
    for p, q in zip(resumed, stepped.param_groups[0]["params"]):
        assert torch.equal(p.detach(), q.detach())
    short = dict(apex, param_groups=[dict(apex["param_groups"][0], exp_avg_sq=[torch.zeros(0), norms[:2]])])
    with pytest.raises(ValueError, match="holds 2 torch.float32 norms for 4 parameters"):
        ek.FusedNovoGrad([torch.nn.Parameter(p.detach().clone()) for p in resumed]).load_state_dict(short)


def test_errors_are_apex_and_torch_words():
    p = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(RuntimeError, match="FusedNovoGrad does not support the AMSGrad variant."):
        ek.FusedNovoGrad(p, amsgrad=True)
    with pytest.raises(RuntimeError, match="FusedNovoGrad only support l2/inf norm now."):
        ek.ExtrapNovoGrad(p, norm_type=1)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0: 1.5"):
        ek.FusedNovoGrad(p, betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="Invalid mode: 'lookahead'"):
        ek.ExtrapNovoGrad(p, mode="lookahead")
    assert ek.FusedNovoGrad(p).resolved_backends() == {(torch.device("cpu"), torch.float32): "cpu"}


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "cuda")])  # their C++ checks
def test_kernels_refuse_a_bad_norm_before_writing(backend):
    """A running norm of the wrong dtype (a checkpoint edited by hand): the step is refused before anything,
    the norms included, is written; the control (the same state, repaired) steps."""
    p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(5))]
    opt = ek.ExtrapNovoGrad(p, backend=backend)
    for q in p:
        q.grad = torch.ones_like(q)
    opt.step()
    opt.state[p[1]]["exp_avg_sq"] = opt.state[p[1]]["exp_avg_sq"].double()
    before = [q.detach().clone() for q in p], copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="torch.float64"):
        opt.step()
    assert all(torch.equal(q.detach(), b) for q, b in zip(p, before[0]))
    for i, state in before[1]["state"].items():
        assert all(torch.equal(opt.state_dict()["state"][i][k], v) for k, v in state.items())
    opt.state[p[1]]["exp_avg_sq"] = opt.state[p[1]]["exp_avg_sq"].float()
    opt.step()
    assert not torch.equal(p[0].detach(), before[0][0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_memory_per_16_bit_element(backend, dtype):
    """2 bytes of parameter and 4 of fp32 m per element (Apex: m in the parameter's dtype, 4 in all), plus one
    norm per tensor; 10 with master_weights=True."""
    for master, expected in ((False, 6), (True, 10)):
        params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in (1, 33, 1000)]
        opt = ek.FusedNovoGrad(params, master_weights=master, backend=backend)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape).to(dtype)
            opt.step()
        held = sum(
            p.numel() * p.element_size() + sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.dim())
            for p in params
        )
        assert held / sum(p.numel() for p in params) == expected
