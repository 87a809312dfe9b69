"""The adaptive optimizers (ExtrapAdam, ExtrapAdamW, ExtrapLAMB, FusedAdam, FusedLAMB; ExtrapAdagrad and
FusedAdagrad where a test is the same for them, tests/test_adagrad.py for the rest) on every backend that
has them here (reference, foreach, and the kernels: cpu, the CUDA launcher's host emulation):
gamma = 0 is torch.optim.Adam / AdamW, LAMB is Apex's FusedLAMB (written
here independently, in Apex's two stages), the modes relate x to the anchor as SPEC's iterations say,
foreach equals the reference within dtype-derived bounds, and they are torch.optim citizens
(checkpoints, found_inf, errors)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from conftest import CPU_BACKENDS, anchor_of, assert_within, noise_tolerance
from test_anchor_free_adam import ROUNDINGS_APART_PER_STEP

import extrap_kernels as ek
from extrap_kernels import philox

BACKENDS = ["reference"] + CPU_BACKENDS
SIZES = [1, 7, 64, 300]
STEPS = 20


def _params(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)) for n in SIZES], gen


def _set_grads(params, gen, step, dtype=None):
    for p in params:
        grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (1 + step % 3)
        p.grad = grad.to(device=p.device, dtype=dtype or p.dtype)


def _copy_grads(src, dst):
    for p, q in zip(src, dst):
        q.grad = p.grad.to(device=q.device, dtype=q.dtype, copy=True)


def _stepped(cls, seed, steps, backend):
    """An optimizer of `cls` over fresh fp32 parameters, `steps` steps into its history."""
    ours, gen = _params(seed, torch.float32)
    opt = cls(ours, lr=0.01, backend=backend)
    for step in range(steps):
        _set_grads(ours, gen, step)
        opt.step()
    return ours, opt, gen


def _in_lockstep(ours, theirs, opt, other, gen):
    """Each step: the same gradients to both parameter lists, both optimizers stepped; yields the step."""
    for step in range(STEPS):
        _set_grads(ours, gen, step)
        _copy_grads(ours, theirs)
        opt.step()
        other.step()
        yield step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "adamw, amsgrad, maximize, weight_decay",
    list(itertools.product([False, True], [False, True], [False, True], [0.0, 0.05])),
)
def test_gamma_zero_is_torch_adam(backend, adamw, amsgrad, maximize, weight_decay):
    ours, gen = _params()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
    opt = (ek.ExtrapAdamW if adamw else ek.ExtrapAdam)(ours, gamma=0.0, backend=backend, **kwargs)
    torch_opt = (torch.optim.AdamW if adamw else torch.optim.Adam)(theirs, foreach=False, **kwargs)
    for step in _in_lockstep(ours, theirs, opt, torch_opt, gen):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14, msg=f"step {step} param {i}")
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], torch_opt.state[q]["exp_avg_sq"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_adam_is_apex_fused_adam(backend):
    """adam_w_mode=True (Apex's default) is AdamW, False Adam with L2 decay; set_grad_none zeroes to None."""
    for adam_w_mode in (True, False):
        ours, gen = _params(4)
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        opt = ek.FusedAdam(ours, lr=0.01, weight_decay=0.02, adam_w_mode=adam_w_mode, backend=backend)
        torch_opt = (torch.optim.AdamW if adam_w_mode else torch.optim.Adam)(theirs, lr=0.01, weight_decay=0.02)
        for _ in _in_lockstep(ours, theirs, opt, torch_opt, gen):
            pass
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
        opt.zero_grad(set_to_none=False)
        assert all(p.grad is None for p in ours)


def apex_lamb(
    xs, gs, state, lr, betas, eps, weight_decay, adam_w_mode, grad_averaging, max_grad_norm, use_nvlamb, bias_correction
):
    """Apex's FusedLAMB step as its two kernels do it: stage 1 clips by the global norm and forms the
    update; stage 2 scales lr by the trust ratio ||p|| / ||update||."""
    b1, b2 = betas
    norm = math.sqrt(sum(float((g * g).sum()) for g in gs))
    clipped = norm / max_grad_norm if max_grad_norm > 0 and norm > max_grad_norm else 1.0
    beta3 = 1 - b1 if grad_averaging else 1.0
    state["step"] = state.get("step", 0) + 1
    t = state["step"]
    bc1, bc2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
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


LAMB_CASES = [
    (0.01, True, True, 1.0, False, True),
    (0.0, True, True, 1.0, False, True),
    (0.0, True, True, 0.0, True, True),
    (0.01, False, False, 5.0, False, False),
    (0.1, True, False, 1e3, True, True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True], ids=["ExtrapLAMB", "FusedLAMB"])
@pytest.mark.parametrize(
    "weight_decay, adam_w_mode, grad_averaging, max_grad_norm, use_nvlamb, bias_correction", LAMB_CASES
)
def test_gamma_zero_lamb_is_apex_lamb(
    backend, fused, weight_decay, adam_w_mode, grad_averaging, max_grad_norm, use_nvlamb, bias_correction
):
    ours, gen = _params(1)
    theirs = [p.detach().clone() for p in ours]
    kwargs = dict(
        lr=0.02,
        eps=1e-6,
        weight_decay=weight_decay,
        adam_w_mode=adam_w_mode,
        grad_averaging=grad_averaging,
        max_grad_norm=max_grad_norm,
        use_nvlamb=use_nvlamb,
        bias_correction=bias_correction,
        backend=backend,
    )
    opt = ek.FusedLAMB(ours, **kwargs) if fused else ek.ExtrapLAMB(ours, gamma=0.0, **kwargs)
    apex_state = {}
    for step in range(STEPS):
        _set_grads(ours, gen, step)
        apex_lamb(
            theirs,
            [p.grad for p in ours],
            apex_state,
            0.02,
            (0.9, 0.999),
            1e-6,
            weight_decay,
            adam_w_mode,
            grad_averaging,
            max_grad_norm,
            use_nvlamb,
            bias_correction,
        )
        opt.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(p.detach(), q, rtol=1e-11, atol=1e-13, msg=f"step {step} param {i}")


def _twins(cls, mode, backend, **kwargs):
    ours, gen = _params(2)
    base = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = cls(ours, mode=mode, gamma=0.3, noise_std=0.01, seed=9, backend=backend, **kwargs)
    base_opt = cls(base, gamma=0.0, backend=backend, **kwargs)
    return ours, base, opt, base_opt, gen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [ek.ExtrapAdamW, ek.ExtrapLAMB, ek.ExtrapAdagrad], ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["past", "noise"])
def test_one_phase_modes_keep_the_base_trajectory_on_the_anchor(backend, cls, mode):
    """Given the same gradients, the anchor follows the base optimizer whatever gamma; x is s - gamma * e
    (past: e the direction just applied) or s + sigma * xi (noise)."""
    ours, base, opt, base_opt, gen = _twins(cls, mode, backend, lr=0.01, weight_decay=0.01)
    previous = [p.detach().clone() for p in base]
    for step in _in_lockstep(ours, base, opt, base_opt, gen):
        for i, (p, b) in enumerate(zip(ours, base)):
            anchor = anchor_of(opt.state[p], p, opt)
            # (past mode recovers the anchor: each step a few roundings of the tensor's largest |s|, |x| or
            # gamma |e| apart, test_anchor_free_adam's bound, LAMB's trust ratio included)
            magnitude = max(1.0, float(anchor.abs().max()), float(p.detach().abs().max()))
            apart = (step + 1) * ROUNDINGS_APART_PER_STEP * torch.finfo(torch.float64).eps / 2 * magnitude
            assert_within(anchor, b.detach(), apart, f"anchor {i} at step {step}")
            if mode == "past":
                e = (previous[i] - b.detach()) / 0.01  # s_new = s_old - lr * e
                torch.testing.assert_close(p.detach(), anchor - 0.3 * e, rtol=1e-9, atol=1e-12)
            else:
                xi = philox.normal(9, step + 1, i, p.numel(), p.device).double()
                # (the kernels' float32 log and cos may differ from torch's by ulps: SPEC)
                torch.testing.assert_close(p.detach(), anchor + 0.01 * xi, rtol=1e-12, atol=noise_tolerance(0.01))
        previous = [b.detach().clone() for b in base]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [ek.ExtrapAdam, ek.ExtrapLAMB, ek.ExtrapAdagrad], ids=lambda c: c.__name__)
def test_local_extrapolates_along_the_look_ahead_direction(backend, cls):
    """Mode "local": extrapolate() stores only the snapshot (the moments and the step are read); with
    gamma = lr and the same gradient, the extrapolated point is exactly where the step then lands."""
    ours, gen = _params(3)
    opt = cls(ours, lr=0.01, weight_decay=0.01, mode="local", backend=backend)
    for step in range(STEPS):
        _set_grads(ours, gen, step)
        before = copy.deepcopy(opt.state_dict()["state"])
        snapshot = [p.detach().clone() for p in ours]
        opt.extrapolate()
        after = opt.state_dict()["state"]
        for i, x in enumerate(snapshot):
            assert all(torch.equal(after[i][k], v) for k, v in before.get(i, {}).items() if k != "anchor")
            assert torch.equal(after[i]["anchor"], x)
        extrapolated = [p.detach().clone() for p in ours]
        opt.step()  # the same gradients
        for p, x in zip(ours, extrapolated):
            torch.testing.assert_close(p.detach(), x, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cls", [ek.ExtrapAdamW, ek.ExtrapLAMB, ek.ExtrapAdagrad], ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["past", "local", "noise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_trajectory_equals_the_reference(backend, cls, mode, dtype):
    trajectory_against_reference(backend, cls, mode, dtype, "cpu")


def trajectory_against_reference(backend, cls, mode, dtype, device):
    """Each backend in the state precision (on `device`) against the reference in float64 (on CPU) on the same
    (rounded) inputs, over a trajectory: each step adds at most 64 roundings of the magnitudes involved, |s|
    and lr * |e| (the 16-bit x one more rounding of its own). (tests/test_gpu.py runs it on the GPU.)"""
    ours, gen = _params(5, dtype)
    ours = [torch.nn.Parameter(p.detach().to(device)) for p in ours]
    exact = [torch.nn.Parameter(p.detach().cpu().double()) for p in ours]
    kwargs = dict(lr=0.01, weight_decay=0.01, mode=mode, gamma=0.05, noise_std=0.01, seed=3)
    opt, oracle = cls(ours, backend=backend, **kwargs), cls(exact, backend="reference", **kwargs)
    eps = torch.finfo(torch.float32).eps
    bound = 0.0
    for step in range(STEPS):
        for phase in range(2 if mode == "local" else 1):
            _set_grads(ours, gen, step)
            _copy_grads(ours, exact)
            if phase == 0 and mode == "local":
                opt.extrapolate()
                oracle.extrapolate()
            else:
                opt.step()
                oracle.step()
        s_max = max(float(anchor_of(oracle.state[q], q, oracle).abs().max()) for q in exact)
        bound += 64 * eps * (s_max + 0.01 * 2 / math.sqrt(1 - 0.999))  # |e| <= |a| + wd |s|, |a| < 2 / sqrt(1 - b2)
        for i, (p, q) in enumerate(zip(ours, exact)):
            ulp = torch.finfo(dtype).eps * q.detach().abs() if dtype != torch.float32 else 0.0
            assert_within(p.detach().cpu(), q.detach(), bound + ulp + 0.05 * bound, f"step {step} x {i}")
            if mode != "local":  # (local: a full-precision anchor is only the snapshot, taken next time)
                assert_within(
                    anchor_of(opt.state[p], p, opt).cpu(),
                    anchor_of(oracle.state[q], q, oracle),
                    bound,
                    f"step {step} s {i}",
                )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cls", [ek.ExtrapAdam, ek.ExtrapLAMB, ek.FusedAdam, ek.ExtrapAdagrad, ek.FusedAdagrad], ids=lambda c: c.__name__
)
def test_checkpoint_resumes_bit_exactly(backend, cls):
    ours, opt, gen = _stepped(cls, 6, 5, backend)
    saved_params, saved = [p.detach().clone() for p in ours], copy.deepcopy(opt.state_dict())
    grads = []
    for step in range(5):
        _set_grads(ours, gen, step)
        grads.append([p.grad.clone() for p in ours])
        opt.step()
    resumed = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt2 = cls(resumed, lr=0.01, backend=backend)
    opt2.load_state_dict(saved)
    for gs in grads:
        for p, g in zip(resumed, gs):
            p.grad = g.clone()
        opt2.step()
    for p, q in zip(ours, resumed):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize(
    "torch_cls, cls, kwargs",
    [
        (torch.optim.Adam, ek.ExtrapAdam, dict(lr=0.01)),
        (torch.optim.Adagrad, ek.ExtrapAdagrad, dict(lr=0.05, lr_decay=0.1, initial_accumulator_value=0.1)),
    ],
    ids=["Adam", "Adagrad"],
)
def test_torch_checkpoint_loads(torch_cls, cls, kwargs):
    """A torch.optim.Adam state dict (exp_avg, exp_avg_sq, step) continues in ExtrapAdam with gamma=0, and a
    torch.optim.Adagrad one ("sum", step) in ExtrapAdagrad, its lr decay reading the loaded count."""
    ours, gen = _params(7)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    torch_opt = torch_cls(theirs, foreach=False, **kwargs)
    for step in range(3):
        _set_grads(theirs, gen, step)
        torch_opt.step()
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    opt = cls(ours, gamma=0.0, **kwargs)
    opt.load_state_dict(torch_opt.state_dict())
    for step in range(3, 6):
        _set_grads(theirs, gen, step)
        _copy_grads(theirs, ours)
        torch_opt.step()
        opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cls", [ek.ExtrapAdamW, ek.ExtrapLAMB, ek.ExtrapAdagrad, ek.ExtrapNovoGrad], ids=lambda c: c.__name__
)
def test_found_inf_changes_nothing(backend, cls):
    ours, opt, gen = _stepped(cls, 8, 3, backend)
    before = [p.detach().clone() for p in ours], copy.deepcopy(opt.state_dict())
    _set_grads(ours, gen, 9)
    ours[1].grad[0] = float("inf")
    opt.step(found_inf=torch.tensor([1.0]))
    assert all(torch.equal(p.detach(), q) for p, q in zip(ours, before[0]))
    after = opt.state_dict()
    for i, state in before[1]["state"].items():
        assert all(torch.equal(after["state"][i][k], v) for k, v in state.items())
    assert after["param_groups"] == before[1]["param_groups"]  # (NovoGrad's count is the group's)


def test_errors_are_torch_and_apex_words():
    p = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(RuntimeError, match="FusedAdam does not support the AMSGrad variant."):
        ek.FusedAdam(p, amsgrad=True)
    with pytest.raises(RuntimeError, match="FusedLAMB does not support the AMSGrad variant."):
        ek.FusedLAMB(p, amsgrad=True)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        ek.ExtrapAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid epsilon value: -1"):
        ek.ExtrapAdamW(p, eps=-1)
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        ek.ExtrapLAMB(p, lr=-0.1)
    assert ek.ExtrapAdam(p).resolved_backends() == {(torch.device("cpu"), torch.float32): "cpu"}


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpu", "cuda")])  # their C++ checks
def test_kernels_refuse_bad_state_before_writing(backend):
    """A second moment of the wrong dtype (a checkpoint edited by hand): the step is refused, naming the
    state, and nothing is written; so is the same launch given to the operator directly (its own checks)."""
    p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(5))]
    opt = ek.ExtrapAdamW(p, store_anchor=True, backend=backend)
    for q in p:
        q.grad = torch.ones_like(q)
    opt.step()
    opt.state[p[1]]["exp_avg_sq"] = opt.state[p[1]]["exp_avg_sq"].double()
    before = [q.detach().clone() for q in p], copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="state 'exp_avg_sq' is torch.float64"):
        opt.step()
    states = [opt.state[q] for q in p]
    bucket = ek.bucket.Bucket(
        params=[q.detach() for q in p],
        grads=[q.grad for q in p],
        anchors=[st["anchor"] for st in states],
        momenta=[st["exp_avg"] for st in states],
        steps=[st["step"] for st in states],
        indices=[0, 1],
        second_moments=[st["exp_avg_sq"] for st in states],
    )
    hyper = opt.launch_args(opt.param_groups[0])[1]
    with pytest.raises(ValueError, match="state 'exp_avg_sq' is Double"):
        ek.backends.BACKENDS[backend].apply(ek.bucket.Phase.UPDATE_PAST, bucket, hyper)
    assert all(torch.equal(q.detach(), b) for q, b in zip(p, before[0]))
    for i, state in before[1]["state"].items():
        assert all(torch.equal(opt.state_dict()["state"][i][k], v) for k, v in state.items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_betas_are_read_when_the_step_runs(backend):
    """betas as one-element tensors (torch.optim.Adam takes them): gamma = 0 is torch's AdamW given the same
    tensors, and a value changed in place between steps is the one the next step uses (the kernels read
    them as they run: capturable; a prepared call does not freeze them). The control: the run whose betas
    did not change is far outside the tolerance."""
    ours, gen = _params(11)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    frozen = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    betas = [torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64)]
    torch_betas = [b.clone() for b in betas]
    opt = ek.ExtrapAdamW(ours, lr=0.01, betas=tuple(betas), weight_decay=0.01, gamma=0.0, backend=backend)
    torch_opt = torch.optim.AdamW(theirs, lr=0.01, betas=tuple(torch_betas), weight_decay=0.01, foreach=False)
    frozen_opt = ek.ExtrapAdamW(frozen, lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, gamma=0.0, backend=backend)
    for step in _in_lockstep(ours, theirs, opt, torch_opt, gen):
        _copy_grads(ours, frozen)
        frozen_opt.step()
        if step == 4:
            for b, value in zip(betas + torch_betas, (0.8, 0.95, 0.8, 0.95)):
                b.fill_(value)
    for p, q, r in zip(ours, theirs, frozen):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)
        assert (r.detach() - q.detach()).abs().max() > 1e4 * 1e-10 * q.detach().abs().max()
