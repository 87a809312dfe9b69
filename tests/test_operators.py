"""The kernels as PyTorch operators (torch.ops.extrap_kernels.*): FakeTensor/meta support, a traced
call equal to an eager one, and torch.compile around the optimizers' step."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek

pytestmark = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")


def _launch(seed=0, n=2, numel=5):
    gen = torch.Generator().manual_seed(seed)
    tensors = [[torch.randn(numel, generator=gen) for _ in range(n)] for _ in range(4)]  # x g s m
    return tensors + [[torch.tensor(3.0) for _ in range(n)]]


def _past(x, g, s, m, steps):
    torch.ops.extrap_kernels.update_past_(x, g, s, m, steps, list(range(len(x))), [], lr=0.1, gamma=0.01, momentum=0.9)


def test_every_phase_is_registered_with_its_schema():
    ek._ext.load()
    for name in ("extrapolate_", "update_", "update_past_", "update_noise_", "update_past_anchor_free_"):
        schema = str(getattr(torch.ops.extrap_kernels, name).default._schema)
        assert "Tensor(a!)[] params, Tensor(h!)[] grads, Tensor(b!)[] anchors" in schema
        assert schema.endswith("-> ()")
    assert "Tensor(a!)" not in str(torch.ops.extrap_kernels.check.default._schema)  # writes nothing


def test_each_family_has_operators_of_its_own_schema():
    """The SGD family's operators take its arguments and not the adaptive bases', and the other way round;
    both have an anchor-free update (the adaptive bases' recovers its anchor from the moments), and only the adaptive
    bases have LAMB's reading pass."""
    ek._ext.load()
    ops = torch.ops.extrap_kernels
    sgd, adam = str(ops.update_past_.default._schema), str(ops.adam_update_past_.default._schema)
    assert "float momentum" in sgd and "beta1" not in sgd and "second_moments" not in sgd
    assert "float beta1" in adam and "Tensor(f!)[]? second_moments" in adam and "momentum=" not in adam
    for schema in (sgd, adam):
        assert "bool checked=False" in schema and "float lr=0." in schema
    assert "beta1" in str(ops.adam_check.default._schema) and "beta1" not in str(ops.check.default._schema)
    assert "Tensor(" not in str(ops.adam_norms.default._schema)  # reads only
    assert "Tensor(e!)[] last_gammas" in str(ops.adam_update_past_anchor_free_.default._schema)
    assert not hasattr(ops, "norms")


def test_an_adaptive_operator_needs_its_second_moments():
    ek._ext.load()
    x, g, s, m, steps = _launch()
    before = [t.clone() for t in x]
    with pytest.raises(ValueError, match="one second moment per parameter"):
        torch.ops.extrap_kernels.adam_update_(x, g, s, m, steps, [0, 1], [], lr=0.1, beta1=0.9, beta2=0.99)
    assert all(torch.equal(a, b) for a, b in zip(x, before))


def test_a_run_checks_unless_told_its_launch_was_checked():
    """A launch refused by its checks raises from the run operator as from the check operator (checked=False,
    the default); the check operator checks even when told checked=True."""
    ek._ext.load()
    x, g, s, m, steps = _launch()
    m = [t.double() for t in m]  # momentum buffers of the wrong dtype
    args = (x, g, s, m, steps, [0, 1], [])
    with pytest.raises(ValueError, match="state .momentum_buffer. is Double"):
        torch.ops.extrap_kernels.update_past_(*args, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="state .momentum_buffer. is Double"):
        torch.ops.extrap_kernels.check(2, *args, lr=0.1, momentum=0.9, checked=True)


def test_meta_kernel_checks_and_writes_nothing():
    """FakeTensor (what torch.compile traces with) runs the same checks without touching memory."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ek._ext.load()
    with FakeTensorMode() as mode:
        x, g, s, m, steps = [[mode.from_tensor(t) for t in column] for column in _launch()]
        _past(x, g, s, m, steps)
        with pytest.raises(ValueError, match="same length"):
            _past(x, g[:1], s, m, steps)
    x, g, s, m, steps = [[t.to("meta") for t in column] for column in _launch()]
    _past(x, g, s, m, steps)
    with pytest.raises(TypeError, match="mismatched dtypes"):
        _past(x, [t.half() for t in g], s, m, steps)


def test_a_compiled_call_equals_an_eager_one():
    ek._ext.load()
    eager, traced = _launch(), _launch()
    _past(*eager)
    torch.compile(_past, fullgraph=True)(*traced)
    for column_a, column_b in zip(eager, traced):
        for a, b in zip(column_a, column_b):
            assert torch.equal(a, b)


def _train(make, compile_what: str | None, steps=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = make(model.parameters())
    step = torch.compile(opt.step) if compile_what == "step" else opt.step

    def iteration(x, y):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        step()

    run = torch.compile(iteration) if compile_what == "iteration" else iteration
    for _ in range(steps):
        run(torch.randn(8, 4), torch.randn(8, 2))
    return [p.detach().clone() for p in model.parameters()]


MAKERS = pytest.mark.parametrize(
    "make",
    [
        lambda p: ek.ExtrapSGD(p, lr=0.1, momentum=0.9),
        lambda p: ek.ExtrapSGD(p, lr=0.1, momentum=0.9, mode="noise"),
        lambda p: ek.FusedSGD(p, lr=0.1, momentum=0.9, nesterov=True),
    ],
    ids=["past", "noise", "fused-sgd"],
)


@MAKERS
def test_a_compiled_step_equals_eager(make):
    """torch.compile(opt.step) works and is the eager step, bit for bit (it runs eagerly:
    optimizer.eager)."""
    torch._dynamo.reset()
    for a, b in zip(_train(make, None), _train(make, "step")):
        assert torch.equal(a, b)


@MAKERS
def test_a_compiled_training_iteration(make):
    """A whole compiled iteration (forward, backward, step) trains as eager does; its compiled
    forward and backward round differently, so the comparison is float32's default tolerance."""
    torch._dynamo.reset()
    for a, b in zip(_train(make, None), _train(make, "iteration")):
        torch.testing.assert_close(b, a)


def test_the_step_is_one_graph_break():
    torch._dynamo.reset()
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = ek.ExtrapSGD([p], lr=0.1)
    explanation = torch._dynamo.explain(lambda: opt.step())()
    assert explanation.graph_break_count <= 1
