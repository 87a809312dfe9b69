"""lr and gamma given as tensors (the capturable path): every backend reads the tensor's value when the
step runs, so results equal those of the same numbers given as floats, and an LR scheduler that
updates the tensor in place is followed without rebuilding anything. The CUDA-graph replay itself is
in test_gpu.py."""

from __future__ import annotations

import pytest
import torch
from conftest import over_backends

import extrap_kernels as ek

MODES = [
    dict(mode="past"),
    dict(mode="local"),
    dict(mode="noise", noise_std=0.01, seed=5),
    dict(mode="past", momentum=0.9, nesterov=True, weight_decay=1e-3),
]


def _train(backend, lr, gamma, options, steps=6, schedule=None):
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (1, 33, 5000)]
    opt = ek.ExtrapSGD(params, lr=lr, gamma=gamma, backend=backend, **options)
    for k in range(steps):
        if schedule is not None:
            schedule(opt, k)
        for phase in range(2 if options["mode"] == "local" else 1):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.extrapolate() if options["mode"] == "local" and phase == 0 else opt.step()
    return [p.detach() for p in params]


@over_backends
@pytest.mark.parametrize("options", MODES, ids=str)
@pytest.mark.parametrize("gamma", [0.03, None], ids=["gamma", "gamma=lr"])
def test_tensor_rates_equal_float_rates(backend, options, gamma):
    as_floats = _train(backend, 0.05, gamma, options)
    as_tensors = _train(backend, torch.tensor(0.05), None if gamma is None else torch.tensor(gamma), options)
    for a, b in zip(as_floats, as_tensors):
        assert torch.equal(a, b)
    moved = _train(backend, 0.06, gamma, options)  # the test can fail: another lr moves the result
    assert not all(torch.equal(a, b) for a, b in zip(as_floats, moved))


@over_backends
def test_tensor_lr_follows_in_place_schedule(backend):
    """LR schedulers fill_ a tensor lr in place; the step reads the new value."""
    lrs = [0.1, 0.05, 0.02, 0.01]

    def set_float(opt, k):
        opt.param_groups[0]["lr"] = lrs[k]

    def fill_tensor(opt, k):
        opt.param_groups[0]["lr"].fill_(lrs[k])

    options = dict(mode="past", momentum=0.9)
    expected = _train(backend, lrs[0], 0.02, options, steps=4, schedule=set_float)
    actual = _train(backend, torch.tensor(lrs[0]), torch.tensor(0.02), options, steps=4, schedule=fill_tensor)
    for a, b in zip(expected, actual):
        assert torch.equal(a, b)


def test_tensor_rate_on_the_wrong_device_or_shape_is_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        ek.ExtrapSGD([p], lr=torch.tensor(-1.0))
    if ek._ext.load() is None:
        pytest.skip("extension not built")
    with pytest.raises(ValueError, match="lr tensor"):
        torch.ops.extrap_kernels.update_(
            params=[p.data],
            grads=[p.grad],
            anchors=[p.data.clone()],
            momenta=[],
            steps=[torch.ones(())],
            indices=[0],
            last_gammas=[],
            lr_tensor=torch.ones(2),
        )
