"""FusedMixedPrecisionLamb against Apex's, written here from its source (apex/optimizers/
fused_mixed_precision_lamb.py and its multi_tensor_lamb_mp kernel): the gradients' norm taken scaled and compared
with max_grad_norm times the scale, the scale divided out in the kernel, the group's count advanced on the device
only where no inf was found, lr a float32 device tensor, and an fp32 master for the parameters of
reduced_precision_dtype. On every backend that runs here, driven by torch.amp.GradScaler as a user's loop drives
it; then Apex's checkpoints, its constructor's refusals, and what differs (documented in the README)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_adaptive import BACKENDS

import extrap_kernels as ek

SIZES = [1, 7, 64, 300]
SCALE = 1024.0  # (a power of two: the scaled gradients divide back exactly)


def apex_mixed_precision_lamb(masters, scaled_grads, state, found_inf, scale, lr, betas, eps, wd, max_grad_norm):
    """One step of Apex's FusedMixedPrecisionLamb (adam_w_mode, grad_averaging, bias correction, Apex's defaults)
    on fp32 `masters`, from gradients multiplied by `scale`: the step is counted and applied only without an inf."""
    if found_inf:
        return
    state["step"] = state.get("step", 0) + 1
    t, (b1, b2) = state["step"], betas
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in scaled_grads))  # of the scaled gradients
    clip = norm / (max_grad_norm * scale) if norm > max_grad_norm * scale else 1.0
    for i, (p, g) in enumerate(zip(masters, scaled_grads)):
        m, v = state.setdefault(("m", i), torch.zeros_like(p)), state.setdefault(("v", i), torch.zeros_like(p))
        g = g.to(p.dtype) / scale / clip
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * p
        p_norm, u_norm = float(p.norm()), float(update.norm())
        ratio = lr * p_norm / u_norm if p_norm != 0 and u_norm != 0 else lr
        p.sub_(ratio * update)


def _scaled_loop(params, opt, scaler, steps, gen, inf_at=()):
    """A user's AMP loop: backward of the scaled loss, scaler.step(opt), scaler.update(); yields each step's
    scaled gradients (an inf put into one at the steps `inf_at`), its scale and whether it was skipped."""
    targets = [torch.randn(p.shape, generator=gen) for p in params]
    for step in range(steps):
        opt.zero_grad()
        loss = sum(((p.float() - t) ** 2 * (1 + step % 3)).sum() for p, t in zip(params, targets))
        scaler.scale(loss).backward()
        if step in inf_at:
            params[1].grad[0] = float("inf")
        scaled, scale = [p.grad.clone() for p in params], scaler.get_scale()
        with warnings.catch_warnings():  # (torch's notice that GradScaler passes itself, as it does to Apex's)
            warnings.simplefilter("ignore", FutureWarning)
            scaler.step(opt)
        scaler.update()
        yield scaled, scale, step in inf_at


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_grad_scaler_loop_is_apex_mixed_precision_lamb(backend, dtype):
    """fp32 parameters, and bf16 ones with reduced_precision_dtype=bf16 (an fp32 master each, the parameter its
    rounding): the same trajectory as Apex's, an inf step skipped and not counted, max_grad_norm acting
    (the gradients' norm is ~30 here, clipped at 1)."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in SIZES]
    masters = [p.detach().float().clone() for p in ours]
    reduced = torch.bfloat16 if dtype == torch.bfloat16 else None
    opt = ek.FusedMixedPrecisionLamb(ours, lr=0.02, reduced_precision_dtype=reduced, backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    apex_state = {}
    for step, (scaled, scale, skipped) in enumerate(_scaled_loop(ours, opt, scaler, 8, gen, inf_at=(3,))):
        apex_mixed_precision_lamb(masters, scaled, apex_state, skipped, scale, 0.02, (0.9, 0.999), 1e-6, 0.01, 1.0)
        assert float(opt.param_groups[0]["step"]) == apex_state["step"]
        for i, (p, q) in enumerate(zip(ours, masters)):
            if dtype == torch.bfloat16:
                torch.testing.assert_close(opt.state[p]["anchor"], q, rtol=1e-5, atol=1e-6, msg=f"step {step} {i}")
            # (a bf16 x is its master rounded: one bf16 spacing apart where the two masters straddle a rounding)
            x_rtol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
            torch.testing.assert_close(p.detach().float(), q, rtol=x_rtol, atol=1e-6, msg=f"step {step} param {i}")
    assert apex_state["step"] == 7  # (the control: the inf step was skipped, the others counted)
    group = opt.param_groups[0]
    assert group["lr"].dtype == torch.float32 and torch.is_tensor(group["step"])


def test_the_count_starts_at_step_and_max_grad_norm_is_the_constructors():
    """`step=` starts every group's count, and a group's own max_grad_norm is ignored for the constructor's, as
    Apex reads it from `defaults`: a group saying 1e3 steps as one saying nothing. The control: a constructor
    saying 1e3 clips differently at this gradients' norm (~60)."""
    grads = [5 * torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in SIZES]
    runs = []
    for group_norm, constructor_norm in ((1e3, 0.1), (None, 0.1), (None, 1e3)):
        params = [torch.nn.Parameter(torch.ones(n)) for n in SIZES]
        group = {"params": params} | ({} if group_norm is None else {"max_grad_norm": group_norm})
        opt = ek.FusedMixedPrecisionLamb([group], step=10, max_grad_norm=constructor_norm)
        assert float(opt.param_groups[0]["step"]) == 10
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        assert float(opt.param_groups[0]["step"]) == 11
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(runs[0], runs[2]))


def test_an_apex_checkpoint_resumes_at_its_count():
    """Apex's checkpoint: lr a float32 tensor, the count an int32 tensor of one element, exp_avg and exp_avg_sq
    per parameter and no master (Apex holds it outside the state). It loads, and the next step is corrected for
    the count + 1: the same update as an optimizer that counted there itself."""
    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in SIZES]
    stepped = ek.FusedMixedPrecisionLamb([torch.nn.Parameter(p.detach().clone()) for p in params], step=4)
    saved = {
        "state": {
            i: {"exp_avg": torch.full_like(p, 0.01), "exp_avg_sq": torch.full_like(p, 1e-4)}
            for i, p in enumerate(params)
        },
        "param_groups": [
            dict(
                stepped.param_groups[0],
                params=list(range(len(params))),
                lr=torch.tensor(1e-3),
                step=torch.tensor([4], dtype=torch.int),
            )
        ],
    }
    opt = ek.FusedMixedPrecisionLamb(params)
    opt.load_state_dict(saved)
    for o in (opt, stepped):
        for p in o.param_groups[0]["params"]:
            o.state[p].update(exp_avg=torch.full_like(p, 0.01), exp_avg_sq=torch.full_like(p, 1e-4))
    grads = [torch.randn(n, generator=gen) for n in SIZES]
    for o in (opt, stepped):
        for p, g in zip(o.param_groups[0]["params"], grads):
            p.grad = g.clone()
        o.step()
    assert float(opt.param_groups[0]["step"]) == 5
    for p, q in zip(opt.param_groups[0]["params"], stepped.param_groups[0]["params"]):
        assert torch.equal(p.detach(), q.detach())


def test_apex_refusals_and_one_dtype_per_group():
    p16, p32 = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16)), torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="FusedLAMB does not support the AMSGrad variant."):
        ek.FusedMixedPrecisionLamb([p32], amsgrad=True)
    with pytest.raises(ValueError, match="must be of one dtype"):
        ek.FusedMixedPrecisionLamb([p16, p32], reduced_precision_dtype=torch.bfloat16)
    opt = ek.FusedMixedPrecisionLamb([{"params": [p16]}, {"params": [p32]}], reduced_precision_dtype=torch.bfloat16)
    assert [g["master_weights"] for g in opt.param_groups] == [True, False]
