"""The Apex drop-in semantics of SPEC.md ("Apex drop-in semantics"), written from Apex's documented behaviour
and torch's fused optimizers, point by point: what a user who changes only the import sees.

Gradients after an AMP step: torch's fused optimizers (and so GradScaler's users) find p.grad unscaled
after `scaler.step(opt)`; our kernels write g / grad_scale back as they read it, on every backend, and a
skipped step (found_inf) leaves the gradients as they were."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek

ALL = CPU_BACKENDS + ["reference"]
SCALE = 1024.0  # a power of two, as GradScaler's: g * SCALE / SCALE is exact in every dtype here


def _sgd_past(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, backend=backend)


def _sgd_local(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, mode="local", backend=backend)


def _sgd_noise(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, mode="noise", noise_std=1e-3, backend=backend)


def _sgd_lars(params, backend):
    return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, lars=True, weight_decay=1e-4, backend=backend)


def _adamw(params, backend):
    return ek.ExtrapAdamW(params, lr=1e-3, weight_decay=1e-2, backend=backend)


def _fused_sgd(params, backend):
    return ek.FusedSGD(params, lr=0.1, momentum=0.9, backend=backend)


def _fused_adam(params, backend):
    return ek.FusedAdam(params, lr=1e-3, backend=backend)


def _fused_lamb(params, backend):
    # max_grad_norm small enough that the clipping acts: the gradients written back are unscaled, not clipped
    return ek.FusedLAMB(params, lr=1e-3, max_grad_norm=0.1, backend=backend)


OPTIMIZERS = {
    "sgd-past": _sgd_past,
    "sgd-local": _sgd_local,
    "sgd-noise": _sgd_noise,
    "sgd-lars": _sgd_lars,
    "adamw": _adamw,
    "fused-sgd": _fused_sgd,
    "fused-adam": _fused_adam,
    "fused-lamb": _fused_lamb,
}


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in (1, 33, 4099)]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _step(opt, params, grads, **amp):
    """One iteration with these (scaled) gradients: in local mode the extrapolation and the step both take
    them, as two closures would."""
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if opt.param_groups[0].get("mode") == "local":
        opt.extrapolate(**amp)
        for p, g in zip(params, grads):
            p.grad = g.clone()
    opt.step(**amp)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_an_amp_step_leaves_the_gradients_unscaled(backend, name, dtype):
    params = _params(dtype)
    opt = OPTIMIZERS[name](params, backend)
    grads = _grads(params, 1)
    amp = dict(grad_scale=torch.tensor([SCALE]), found_inf=torch.tensor([0.0]))
    _step(opt, params, [g * SCALE for g in grads], **amp)
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)
    # (control: without grad_scale the gradients are the optimizer's to read, and stay as they came)
    _step(opt, params, [g * SCALE for g in grads])
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g * SCALE)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", ["sgd-past", "sgd-local", "adamw", "fused-lamb"])
def test_a_skipped_amp_step_leaves_the_gradients_scaled(backend, name):
    params = _params(torch.float32)
    opt = OPTIMIZERS[name](params, backend)
    _step(opt, params, _grads(params, 1))
    scaled = [g * SCALE for g in _grads(params, 2)]
    _step(opt, params, scaled, grad_scale=torch.tensor([SCALE]), found_inf=torch.tensor([1.0]))
    for p, g in zip(params, scaled):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", ["sgd-past", "fused-adam", "fused-lamb"])
def test_grad_scaler_users_read_the_true_gradients(backend, name):
    """What a training loop that logs gradient norms after `scaler.step(opt)` sees: the unscaled gradients,
    as with torch.optim.SGD(fused=True)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x = torch.randn(16, 6)
    model(x).pow(2).mean().backward()
    true = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    opt = OPTIMIZERS[name](list(model.parameters()), backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.step(opt)
    scaler.update()
    for p, g in zip(model.parameters(), true):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "cuda", "foreach") if b in CPU_BACKENDS])
@pytest.mark.parametrize("name", ["sgd-past", "fused-sgd", "adamw"])
def test_gradients_unscaled_across_the_chunks_of_a_large_tensor(backend, name):
    """A tensor of several of the CPU launcher's 64K-element chunks (written back chunk by chunk, while in
    cache) and of the CUDA launcher's (one block each), with a ragged end."""
    params = [torch.nn.Parameter(torch.randn(3 * 65536 + 5)), torch.nn.Parameter(torch.randn(7))]
    opt = OPTIMIZERS[name](params, backend)
    grads = _grads(params, 3)
    _step(opt, params, [g * SCALE for g in grads], grad_scale=torch.tensor([SCALE]))
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)
