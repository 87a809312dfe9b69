"""What a torch.optim / Apex user relies on: zero_grad, schedulers, closures, param groups, many
tensors in one launch, parameters without gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS, steps_for, trajectory_tolerance

import extrap_kernels as ek


def test_zero_grad_set_to_none():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    opt = ek.ExtrapSGD([p], lr=0.1)
    opt.zero_grad()
    assert p.grad is None
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))


def test_fused_sgd_zero_grad_is_apex_on_torch_2():
    """Apex's FusedSGD.zero_grad sets None with set_grad_none, else calls torch.optim's zero_grad, whose
    default on torch 2.x is None too; so a parameter that gets no gradient in an iteration gets no weight
    decay or momentum either, as with torch.optim.SGD."""
    for set_grad_none in (False, True):
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.ones(3)
        ek.FusedSGD([p], lr=0.1, set_grad_none=set_grad_none).zero_grad()
        assert p.grad is None
    p.grad = torch.ones(3)
    ek.FusedSGD([p], lr=0.1).zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    # torch's own two-step example: the second step has no gradient for `idle`
    results = []
    for make in (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda ps: ek.FusedSGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    ):
        idle = torch.nn.Parameter(torch.ones(1))
        opt = make([idle])
        idle.grad = torch.ones(1)
        opt.step()
        opt.zero_grad()
        opt.step()
        results.append(idle.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lr_scheduler_and_gamma_follows_lr(backend):
    """gamma=None extrapolates with the group's current lr, so a scheduler moves both; an explicit
    gamma stays."""
    p = torch.nn.Parameter(torch.zeros(4))
    opt = ek.ExtrapSGD([p], lr=1.0, backend=backend)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    anchor = torch.zeros(4)
    for lr in [1.0, 0.5, 0.25]:
        p.grad = torch.ones(4)
        opt.step()
        anchor -= lr
        assert torch.equal(opt.state[p]["anchor"], anchor)
        assert torch.equal(p.detach(), anchor - lr)  # past mode: x = s - gamma * d, gamma = lr
        sched.step()
    fixed = ek.ExtrapSGD([p], lr=1.0, gamma=0.25, backend=backend)
    p.grad = torch.ones(4)
    fixed.step()
    assert torch.equal(p.detach(), fixed.state[p]["anchor"] - 0.25)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_local_closure_runs_both_phases_and_returns_loss_at_anchor(backend):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    opt = ek.ExtrapSGD(model.parameters(), lr=0.1, mode="local", backend=backend)
    seen = []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        seen.append([p.detach().clone() for p in model.parameters()])
        return loss

    start = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert len(seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(seen[0], start))  # first closure at x_t
    assert not any(torch.equal(a, b) for a, b in zip(seen[1], start))  # second at x_{t+1/2}
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(torch.nn.functional.linear(x, *start), y))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_param_groups_and_params_without_grad(backend):
    a, b, frozen = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    opt = ek.ExtrapSGD(
        [{"params": [a, frozen]}, {"params": [b], "lr": 0.5, "mode": "past", "gamma": 0.0}],
        lr=0.1,
        gamma=0.0,
        backend=backend,
    )
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert torch.allclose(a.detach(), torch.full((3,), 0.9))
    assert torch.allclose(b.detach(), torch.full((3,), 0.5))
    assert torch.equal(frozen.detach(), torch.ones(3)) and frozen not in opt.state


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_many_tensors_in_one_group(backend):
    """100 tensors of mixed sizes in one bucket, against the reference, 20 steps (fewer interpreted)."""
    gen = torch.Generator().manual_seed(5)
    sizes = [int(n) for n in torch.randint(0, 3000, (100,), generator=gen)] + [70_001]
    ours = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in sizes]
    exact = [torch.nn.Parameter(p.detach().double()) for p in ours]
    kwargs = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, lars=True, lars_clip=True)
    opt, oracle = ek.ExtrapSGD(ours, backend=backend, **kwargs), ek.ExtrapSGD(exact, backend="reference", **kwargs)
    steps = steps_for(backend, 20)
    for _ in range(steps):
        for p, q in zip(ours, exact):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.double()
        opt.step()
        oracle.step()
    tol = trajectory_tolerance(torch.float32, steps, 6.0, 0.9)
    for p, q in zip(ours, exact):
        torch.testing.assert_close(p.detach().double(), q.detach(), atol=tol, rtol=0)


def test_backend_listing():
    assert {"reference", "foreach"} <= set(ek.available_backends("cpu"))
    assert ek.backends.resolve("auto", torch.device("cpu")).name in ("cpu", "foreach")
