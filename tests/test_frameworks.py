"""What training frameworks do to the optimizer, without the frameworks: wrappers that hold it as
`.optimizer` (accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer), their GradScaler, and
torch's own checks of the arguments they pass through."""

from __future__ import annotations

import pytest
import torch

import extrap_kernels as ek


class Wrapper(torch.optim.Optimizer):
    """A framework's optimizer wrapper, as accelerate writes it: the optimizer as `.optimizer`, step and
    zero_grad passed through, and a `scaler` attribute (None without fp16 loss scaling)."""

    def __init__(self, optimizer, scaler=None):
        self.optimizer, self.scaler = optimizer, scaler
        self.steps = 0

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        self.steps += 1
        return self.optimizer.step(closure)


def _trained(wrap, steps=4):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    opt = ek.ExtrapSGD(model.parameters(), lr=0.1, momentum=0.9, mode="local", gamma=0.2)
    outer = wrap(opt)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for _ in range(steps):
        ek.train_step(model, outer, lambda: torch.nn.functional.mse_loss(model(x), y))
    return outer, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_train_step_unwraps_a_framework_wrapper():
    """Local mode through a wrapper (one and two deep) is the unwrapped iteration, bit for bit, and the
    wrapper's step() is the one called."""
    _, plain = _trained(lambda opt: opt)
    outer, wrapped = _trained(Wrapper)
    assert torch.equal(plain, wrapped) and outer.steps == 4
    _, nested = _trained(lambda opt: Wrapper(Wrapper(opt)))
    assert torch.equal(plain, nested)
    assert ek.distributed.unwrapped(Wrapper(Wrapper(outer.optimizer))) is outer.optimizer
    assert ek.distributed.needs_extrapolation_pass(Wrapper(outer.optimizer))


def test_train_step_refuses_local_mode_under_a_wrappers_grad_scaler():
    with pytest.raises(RuntimeError, match=r"mode='local' under the wrapper's GradScaler .* use mode='past'"):
        _trained(lambda opt: Wrapper(opt, scaler=torch.amp.GradScaler("cpu")))


def test_mixed_float_and_tensor_betas_are_refused_in_torchs_words():
    p = torch.nn.Parameter(torch.ones(3))
    for cls in (ek.ExtrapAdam, ek.ExtrapAdamW, ek.FusedAdam):
        with pytest.raises(ValueError, match="^betas must be either both floats or both Tensors$"):
            cls([p], betas=(0.9, torch.tensor(0.99)))
        cls([p], betas=(torch.tensor(0.9), torch.tensor(0.99)))  # both tensors: capturable betas
    with pytest.raises(ValueError, match="^betas must be either both floats or both Tensors$"):
        torch.optim.Adam([p], betas=(0.9, torch.tensor(0.99)))  # (the words are torch's)


# Gradient accumulation in mode "local": Lightning with accumulate_grad_batches=k runs micro-batches 1..k-1
# forward and backward, then step(closure), whose closure re-runs micro-batch k only and zeroes nothing. The
# second gradient would be added onto the accumulated first one: refused, the iteration not applied.

ACCUMULATING = ["cpu", "foreach", "reference"] + [b for b in ("cuda", "triton") if b in ek.available_backends("cpu")]


def _accumulating_loop(backend, mode, zeroes, explicit=False, batches=3):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    opt = ek.ExtrapSGD(model.parameters(), lr=0.1, momentum=0.9, mode=mode, gamma=0.2, backend=backend)
    data = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(batches)]

    def loss_of(x, y):
        return torch.nn.functional.mse_loss(model(x), y) / batches

    def closure():  # Lightning's: the last micro-batch, no zero_grad
        if zeroes:
            opt.zero_grad()
        loss = loss_of(*data[-1])
        loss.backward()
        return loss

    for x, y in data[:-1]:
        loss_of(x, y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    if explicit:  # the same loop written out: extrapolate(), a backward, step()
        closure()
        opt.extrapolate()
        closure()
        opt.step()
    else:
        opt.step(closure)
    return model, opt, before


@pytest.mark.parametrize("backend", ACCUMULATING)
@pytest.mark.parametrize("explicit", [False, True], ids=["closure", "extrapolate"])
def test_local_mode_refuses_a_second_gradient_added_onto_the_first(backend, explicit):
    with pytest.raises(RuntimeError, match=r"not zeroed between extrapolate\(\) and step\(\).*use mode='past'"):
        _accumulating_loop(backend, "local", zeroes=False, explicit=explicit)


@pytest.mark.parametrize("backend", ACCUMULATING)
def test_a_refused_local_iteration_leaves_the_parameters_as_they_were(backend):
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 2)
    opt = ek.ExtrapSGD(model.parameters(), lr=0.1, momentum=0.9, mode="local", gamma=0.2, backend=backend)
    x = torch.randn(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    model(x).sum().backward()
    opt.extrapolate()
    assert not torch.equal(before[0], model.weight.detach())  # (extrapolated)
    model(x).sum().backward()  # added onto the first gradient
    with pytest.raises(RuntimeError, match="not zeroed"):
        opt.step()
    for a, p in zip(before, model.parameters()):
        assert torch.equal(a, p.detach())
    assert all(float(opt.state[p]["step"]) == 0 for p in model.parameters())
    opt.zero_grad()  # and the next iteration runs
    model(x).sum().backward()
    opt.step(lambda: (opt.zero_grad(), model(x).sum().backward()))


@pytest.mark.parametrize("backend", ACCUMULATING)
def test_accumulation_runs_in_past_mode_and_with_a_zeroing_closure(backend):
    """(The controls: the same loops, right where they can be, are not refused.)"""
    _accumulating_loop(backend, "past", zeroes=False)
    _accumulating_loop(backend, "local", zeroes=True)
    _accumulating_loop(backend, "local", zeroes=True, explicit=True)
