"""state_dict() loads into a fresh optimizer and model and resumes bit-exactly, for each mode."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek


def _model(seed, dtype):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def _train(model, opt, batches, local):
    for x, y in batches:

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
            loss.backward()
            return loss

        if local:
            closure()
            opt.extrapolate()
            closure()
            opt.step()
        else:
            opt.step(closure)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize(
    "mode, lars",
    [("past", True), ("past", False), ("local", True), ("noise", True)],
    ids=["past", "past-anchor-free", "local", "noise"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_is_bit_identical(backend, mode, lars, dtype):
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 7, generator=gen).to(dtype), torch.randn(8, 3, generator=gen)) for _ in range(20)]
    kwargs = dict(
        lr=0.05, mode=mode, momentum=0.9, weight_decay=1e-3, lars=lars, noise_std=0.01, seed=5, backend=backend
    )

    straight = _model(0, dtype)
    opt = ek.ExtrapSGD(straight.parameters(), **kwargs)
    _train(straight, opt, batches, mode == "local")

    first = _model(0, dtype)
    opt1 = ek.ExtrapSGD(first.parameters(), **kwargs)
    _train(first, opt1, batches[:10], mode == "local")
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    resumed = _model(123, dtype)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2 = ek.ExtrapSGD(resumed.parameters(), **{**kwargs, "lr": 0.5})
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 0.05
    _train(resumed, opt2, batches[10:], mode == "local")

    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key]), key
            assert value.dtype == opt2.state[b][key].dtype, key


def test_master_state_keeps_fp32_on_load():
    """torch would cast state to the parameter's bf16; the master anchor and momentum stay fp32."""
    p = torch.nn.Parameter(torch.randn(10).to(torch.bfloat16))
    opt = ek.ExtrapSGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(10).to(torch.bfloat16)
    opt.step()
    fresh = ek.ExtrapSGD([p], lr=0.1, momentum=0.9)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.state[p]["anchor"].dtype == torch.float32
    assert fresh.state[p]["momentum_buffer"].dtype == torch.float32
    assert torch.equal(fresh.state[p]["anchor"], opt.state[p]["anchor"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_sgd_state_dict_maps_over(backend):
    """A torch.optim.SGD checkpoint (its momentum_buffer) continues as ExtrapSGD(gamma=0) exactly as
    SGD would."""
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(100, generator=gen))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    for _ in range(3):
        p.grad = torch.randn(100, generator=gen)
        sgd.step()
    q = torch.nn.Parameter(p.detach().clone())
    ours = ek.ExtrapSGD([q], lr=0.1, gamma=0.0, momentum=0.9, backend=backend)
    ours.load_state_dict(sgd.state_dict())
    for _ in range(5):
        g = torch.randn(100, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
        sgd.step()
        ours.step()
    torch.testing.assert_close(q.detach(), p.detach(), atol=1e-6, rtol=0)
