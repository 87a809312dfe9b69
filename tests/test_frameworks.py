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
