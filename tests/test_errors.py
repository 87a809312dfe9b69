"""Bad input raises a clear exception before any tensor is written: parameters and state untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek
from extrap_kernels import core
from extrap_kernels.bucket import Bucket, Phase
from extrap_kernels.hyper import SGDHyper

ALL = CPU_BACKENDS + ["reference"]


def _state(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


def _unchanged(before, after):
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert before[1].keys() == after[1].keys()
    for key in before[1]:
        assert before[1][key].keys() == after[1][key].keys()
        assert all(torch.equal(v, after[1][key][k]) for k, v in before[1][key].items())


def _trained(backend, mode="past", n=3, **kwargs):
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(n)]
    opt = ek.ExtrapSGD(params, lr=0.1, momentum=0.9, mode=mode, backend=backend, **kwargs)
    for p in params:
        p.grad = torch.randn(5)
    if mode == "local":
        opt.extrapolate()
    opt.step()
    return opt, params


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-0.1), "Invalid learning rate"),
        (dict(gamma=-1.0), "Invalid gamma"),
        (dict(momentum=-0.5), "Invalid momentum"),
        (dict(weight_decay=-1e-4), "Invalid weight_decay"),
        (dict(noise_std=-1.0), "Invalid noise_std"),
        (dict(nesterov=True), "Nesterov"),
        (dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov"),
        (dict(mode="extra"), "Invalid mode"),
        (dict(past="future"), "Invalid past"),
        (dict(lr=float("nan")), "Invalid learning rate"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ek.ExtrapSGD([torch.nn.Parameter(torch.zeros(2))], **{"lr": 0.1, **kwargs})


def test_fused_sgd_needs_lr():
    with pytest.raises(ValueError, match="lr"):
        ek.FusedSGD([torch.nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("backend", ALL)
def test_negative_lr_set_later_is_caught_at_step(backend):
    opt, params = _trained(backend)
    before = _state(opt, params)
    opt.param_groups[0]["lr"] = -1.0
    for p in params:
        p.grad = torch.randn(5)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    _unchanged(before, _state(opt, params))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bad", ["sparse", "complex", "noncontiguous_grad", "noncontiguous_param", "int"])
def test_bad_tensor_raises_before_writing(backend, bad):
    opt, params = _trained(backend)
    before = _state(opt, params)
    for p in params:
        p.grad = torch.randn(5)
    victim = params[2]  # the last one, so a half-updating implementation would have written the others
    if bad == "sparse":
        victim.grad = torch.randn(5).to_sparse()
    elif bad == "complex":
        extra = torch.nn.Parameter(torch.randn(5, dtype=torch.complex64))
        extra.grad = torch.randn(5, dtype=torch.complex64)
        opt.param_groups[0]["params"].append(extra)
    elif bad == "noncontiguous_grad":
        victim.grad = torch.randn(10)[::2]
    elif bad == "noncontiguous_param":
        extra = torch.nn.Parameter(torch.randn(4, 3).t())
        extra.grad = torch.randn(3, 4)
        opt.param_groups[0]["params"].append(extra)
    elif bad == "int":
        extra = torch.nn.Parameter(torch.ones(3, dtype=torch.int64), requires_grad=False)
        extra.grad = torch.ones(3, dtype=torch.int64)
        opt.param_groups[0]["params"].append(extra)
    strided_ok = bad.startswith("noncontiguous") and not ek.backends.BACKENDS[backend].needs_contiguous
    if strided_ok or bad == "complex":  # foreach and reference handle strided tensors; complex is supported
        opt.step()
        return
    with pytest.raises(
        (RuntimeError, TypeError), match="sparse gradients are not supported.*SparseAdam|contiguous|dtype"
    ):
        opt.step()
    _unchanged(before, _state(opt, params))


@pytest.mark.parametrize("backend", ALL)
def test_state_on_wrong_device_or_dtype(backend):
    """Mixed devices or dtypes inside one fused bucket (here: corrupted state) are refused."""
    opt, params = _trained(backend)
    for p in params:
        p.grad = torch.randn(5)
    opt.state[params[1]]["momentum_buffer"] = opt.state[params[1]]["momentum_buffer"].to(torch.float16)
    before = _state(opt, params)
    with pytest.raises(RuntimeError, match="momentum_buffer"):
        opt.step()
    _unchanged(before, _state(opt, params))
    opt.state[params[1]]["momentum_buffer"] = torch.zeros(5, device="meta")
    with pytest.raises(RuntimeError, match="momentum_buffer"):
        opt.step()


def test_functional_bucket_checks():
    x = [torch.zeros(3), torch.zeros(3)]
    bucket = Bucket(
        params=x,
        grads=[torch.zeros(3), torch.zeros(3, dtype=torch.float64)],
        anchors=[torch.zeros(3), torch.zeros(3)],
        momenta=[],
        steps=[torch.tensor(0.0)] * 2,
        indices=[0, 1],
    )
    backend = ek.backends.resolve("foreach", torch.device("cpu"))
    with pytest.raises(TypeError, match="mismatched dtypes"):
        core.run([core.Work(Phase.UPDATE, bucket, SGDHyper(lr=0.1), backend)])
    bucket.grads[1] = torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="mixed devices"):
        core.run([core.Work(Phase.UPDATE, bucket, SGDHyper(lr=0.1), backend)])
    assert all(torch.equal(t, torch.zeros(3)) for t in x)


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")
def test_extension_checks_its_launch():
    """The operators refuse a malformed launch on their own, whatever the Python layer did, and write
    nothing: the step count is not advanced either."""
    ek._ext.load()
    x, g, s = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    step = torch.tensor(1.0)

    def update(grads, momenta=(), **kwargs):
        torch.ops.extrap_kernels.update_([x], grads, [s], list(momenta), [step], [0], [], lr=0.1, **kwargs)

    with pytest.raises(ValueError, match="contiguous"):
        update([torch.zeros(8)[::2]])
    with pytest.raises(ValueError, match="gradient shape"):
        update([torch.zeros(5)])
    with pytest.raises(ValueError, match="momenta"):
        update([g], [torch.zeros(4)])
    with pytest.raises(TypeError, match="mismatched dtypes"):
        update([g.double()])
    with pytest.raises(ValueError, match="momentum_buffer"):
        update([g], [torch.zeros(3)], momentum=0.9)
    with pytest.raises(ValueError, match="anchors"):
        torch.ops.extrap_kernels.update_past_([x], [g], [], [], [step], [0], [], lr=0.1)
    with pytest.raises(ValueError, match="unknown phase"):
        torch.ops.extrap_kernels.check(9, [x], [g], [s], [], [step], [0], [], lr=0.1)
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'learning_rate'"):
        update([g], learning_rate=0.1)  # arguments go by schema name: a misspelled one is an error
    assert float(step) == 1.0 and torch.equal(x, torch.zeros(4))


@pytest.mark.parametrize("backend", ALL)
def test_local_mode_call_order(backend):
    opt, params = _trained(backend, mode="local")
    for p in params:
        p.grad = torch.randn(5)
    before = _state(opt, params)
    with pytest.raises(RuntimeError, match="needs extrapolate"):
        opt.step()
    _unchanged(before, _state(opt, params))
    opt.extrapolate()
    with pytest.raises(RuntimeError, match="twice"):
        opt.extrapolate()
    params[0].grad = None
    with pytest.raises(RuntimeError, match="not the ones extrapolated"):
        opt.step()


def test_extrapolate_in_one_phase_mode():
    opt, _ = _trained("foreach", mode="past")
    with pytest.raises(RuntimeError, match="mode='local'"):
        opt.extrapolate()


def test_unknown_backend():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown backend"):
        ek.ExtrapSGD([p], lr=0.1, backend="tpu").step()
