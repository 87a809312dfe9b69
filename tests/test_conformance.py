"""The torch.optim contract, for every optimizer class and every backend that runs here: what a training
framework relies on (deepcopy and pickle, state_dict round trips, checkpoints of torch.optim.SGD,
param groups, LR schedulers, zero_grad, hooks, constructor errors). Written from the torch.optim
documentation and behaviour."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from conftest import CPU_BACKENDS, anchor_of, trajectory_tolerance

import extrap_kernels as ek

BACKENDS = CPU_BACKENDS + ["reference"]
OPTIMIZERS = {
    "extrap-past": lambda ps, b, **kw: ek.ExtrapSGD(ps, **{"lr": 0.1, "momentum": 0.9, "gamma": 0.05, **kw}, backend=b),
    "extrap-past-stored": lambda ps, b, **kw: ek.ExtrapSGD(
        ps, **{"lr": 0.1, "momentum": 0.9, "gamma": 0.05, "store_anchor": True, **kw}, backend=b
    ),
    "extrap-local": lambda ps, b, **kw: ek.ExtrapSGD(
        ps, **{"lr": 0.1, "momentum": 0.9, "gamma": 0.05, "mode": "local", **kw}, backend=b
    ),
    "extrap-noise": lambda ps, b, **kw: ek.ExtrapSGD(
        ps, **{"lr": 0.1, "momentum": 0.9, "mode": "noise", **kw}, backend=b
    ),
    "fused-sgd": lambda ps, b, **kw: ek.FusedSGD(ps, **{"lr": 0.1, "momentum": 0.9, **kw}, backend=b),
    # the adaptive bases
    "extrap-adamw-past": lambda ps, b, **kw: ek.ExtrapAdamW(ps, **{"lr": 0.01, "gamma": 0.005, **kw}, backend=b),
    "extrap-adam-local": lambda ps, b, **kw: ek.ExtrapAdam(
        ps, **{"lr": 0.01, "gamma": 0.005, "mode": "local", **kw}, backend=b
    ),
    "extrap-lamb-noise": lambda ps, b, **kw: ek.ExtrapLAMB(ps, **{"lr": 0.01, "mode": "noise", **kw}, backend=b),
    "fused-adam": lambda ps, b, **kw: ek.FusedAdam(ps, **{"lr": 0.01, **kw}, backend=b),
    "fused-lamb": lambda ps, b, **kw: ek.FusedLAMB(ps, **{"lr": 0.01, **kw}, backend=b),
    "extrap-adagrad-local": lambda ps, b, **kw: ek.ExtrapAdagrad(
        ps, **{"lr": 0.01, "gamma": 0.005, "mode": "local", **kw}, backend=b
    ),
    "fused-adagrad": lambda ps, b, **kw: ek.FusedAdagrad(ps, **{"lr": 0.01, **kw}, backend=b),
    "fused-mixed-precision-lamb": lambda ps, b, **kw: ek.FusedMixedPrecisionLamb(ps, **{"lr": 0.01, **kw}, backend=b),
    "extrap-novograd-local": lambda ps, b, **kw: ek.ExtrapNovoGrad(
        ps, **{"lr": 0.01, "gamma": 0.005, "mode": "local", **kw}, backend=b
    ),
    "fused-novograd": lambda ps, b, **kw: ek.FusedNovoGrad(ps, **{"lr": 0.01, **kw}, backend=b),
}
every = pytest.mark.parametrize("backend", BACKENDS)
every_optimizer = pytest.mark.parametrize("name", list(OPTIMIZERS))
# every optimizer on every backend
every_case = pytest.mark.parametrize("backend, name", [(backend, name) for name in OPTIMIZERS for backend in BACKENDS])


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        x, y = _batch(step)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@every_case
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copied_optimizer_steps_identically(backend, name, how):
    """A copy of model and optimizer together (the optimizer's state keyed by the copied parameters)
    trains exactly as the original goes on to."""
    model = _model()
    opt = OPTIMIZERS[name](model.parameters(), backend)
    _train(model, opt, 2)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    elif how == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    else:
        buffer = io.BytesIO()
        torch.save((model, opt), buffer)
        buffer.seek(0)
        model2, opt2 = torch.load(buffer, weights_only=False)
    assert opt2.backend == backend
    _same(_train(model, opt, 3, start=2), _train(model2, opt2, 3, start=2))
    opt2.zero_grad()


@every_case
def test_state_dict_round_trip_resumes_bit_exactly(backend, name):
    model = _model()
    opt = OPTIMIZERS[name](model.parameters(), backend)
    _train(model, opt, 2)
    saved = copy.deepcopy(opt.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed = OPTIMIZERS[name](resumed_model.parameters(), backend)
    resumed.load_state_dict(saved)
    again = resumed.state_dict()
    assert again["param_groups"] == saved["param_groups"]  # save -> load -> save is the identity
    assert again["state"].keys() == saved["state"].keys()
    for key, state in saved["state"].items():
        assert state.keys() == again["state"][key].keys()
        for field, value in state.items():
            assert torch.equal(value, again["state"][key][field])
    _same(_train(model, opt, 3, start=2), _train(resumed_model, resumed, 3, start=2))


@every
@pytest.mark.parametrize("name", ["extrap-past", "fused-sgd"])
@pytest.mark.parametrize("step_kind", ["tensor", "float"])
def test_a_torch_sgd_checkpoint_continues_as_torch_sgd(backend, name, step_kind):
    """torch.optim.SGD's state dict (its momentum buffers; a step count, as a tensor or as an older
    checkpoint's number, where one is present) loads, and with gamma 0 training goes on as torch's."""
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, sgd, 2)
    saved = copy.deepcopy(sgd.state_dict())
    for state in saved["state"].values():
        state["step"] = torch.tensor(2.0) if step_kind == "tensor" else 2
    ours_model = copy.deepcopy(model)
    ours = OPTIMIZERS[name](ours_model.parameters(), backend, **({"gamma": 0.0} if name != "fused-sgd" else {}))
    ours.load_state_dict(saved)
    expected = _train(model, sgd, 3, start=2)
    actual = _train(ours_model, ours, 3, start=2)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-6)  # fp32: torch's and our operation order differ


@every_case
def test_param_groups_and_add_param_group(backend, name):
    """Per-group lr and weight decay apply to their group only; a group added later trains from then on."""
    torch.manual_seed(0)
    a, b, c = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
    opt = OPTIMIZERS[name]([{"params": [a]}, {"params": [b], "lr": 0.0, "weight_decay": 0.1}], backend)
    b_before = b.detach().clone()
    for p in (a, b):
        p.grad = torch.ones(3)
    if "local" in name:
        opt.extrapolate()
    opt.step()
    assert not torch.equal(a, torch.zeros(3))
    # lr 0 in b's group: its anchor (the Apex drop-ins: the parameter itself) does not move
    if name.startswith("fused"):
        assert torch.equal(b, b_before)
    elif "anchor" in opt.state[b]:
        assert torch.equal(opt.state[b]["anchor"], b_before)
    else:  # anchor-free past: s recovered from x and the state
        torch.testing.assert_close(anchor_of(opt.state[b], b, opt), b_before.double())
    opt.add_param_group({"params": [c], "lr": 0.5})
    for key, value in opt.defaults.items():  # defaults fill the new group
        assert key == "lr" or opt.param_groups[2][key] == value
    c_before = c.detach().clone()
    for p in (a, b, c):
        p.grad = torch.ones(3)
    if "local" in name:
        opt.extrapolate()
    opt.step()
    assert not torch.equal(c, c_before)


@every_case
@pytest.mark.parametrize("schedule", ["StepLR", "OneCycleLR"])
def test_lr_schedulers_drive_the_lr(backend, name, schedule):
    model = _model()
    opt = OPTIMIZERS[name](model.parameters(), backend)
    if schedule == "StepLR":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    else:
        # (Adagrad has no momentum or betas to cycle, as torch.optim.Adagrad has none)
        cycles = "adagrad" not in name
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=4, cycle_momentum=cycles)
    lrs = []
    for step in range(3):
        _train(model, opt, 1, start=step)
        sched.step()
        lrs.append(float(opt.param_groups[0]["lr"]))  # (a tensor lr is updated in place)
    assert len(set(lrs)) == 3
    reference = copy.deepcopy(sched.state_dict())
    assert reference["last_epoch"] == 3


@every
@pytest.mark.parametrize("name", ["extrap-past", "fused-sgd"])
def test_a_tensor_lr_stepped_in_place(backend, name):
    """A one-element tensor lr that a scheduler updates in place trains as the same lr given as numbers."""
    floats, tensors = _model(), _model()
    opt_f = OPTIMIZERS[name](floats.parameters(), backend, lr=0.1)
    opt_t = OPTIMIZERS[name](tensors.parameters(), backend, lr=torch.tensor(0.1))
    for step in range(3):
        _train(floats, opt_f, 1, start=step)
        _train(tensors, opt_t, 1, start=step)
        opt_f.param_groups[0]["lr"] *= 0.5
        opt_t.param_groups[0]["lr"].mul_(0.5)
    for a, b in zip(floats.parameters(), tensors.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)  # fp32: 0.1 * 0.5^k as a number or a tensor


@every_optimizer
def test_zero_grad_sets_none_by_default(name):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = OPTIMIZERS[name]([p], "foreach")
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert p.grad is None
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    if name.startswith("fused-") and name != "fused-sgd":  # Apex's set_grad_none=True default wins
        assert p.grad is None
    else:
        assert p.grad is not None and torch.equal(p.grad, torch.zeros(3))


@every_case
def test_step_and_load_state_dict_hooks(backend, name):
    """Each hook once per call, whatever optimizers the process made before (torch.optim wraps a class's
    step() with the hooks when its first instance is made: a base class's wrapped step, called by a
    subclass's, would run them twice)."""
    for other in OPTIMIZERS.values():
        other([torch.nn.Parameter(torch.zeros(2))], backend)
    model = _model()
    opt = OPTIMIZERS[name](model.parameters(), backend)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("save-pre"))
    _train(model, opt, 1)
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "save-pre", "load-pre", "load-post"]


@pytest.mark.parametrize("cls", [ek.ExtrapSGD, ek.FusedSGD])
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-0.1), ValueError, "Invalid learning rate"),
        (dict(lr=torch.tensor([0.1, 0.1])), ValueError, "Tensor lr must be 1-element"),
        (dict(lr="0.1"), TypeError, "Invalid learning rate"),
        (dict(lr=0.1, momentum=-0.9), ValueError, "Invalid momentum"),
        (dict(lr=0.1, weight_decay=-1.0), ValueError, "Invalid weight_decay"),
        (dict(lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires a momentum and zero dampening"),
        (dict(lr=0.1, backend="nope"), ValueError, "unknown backend 'nope'"),
    ],
)
def test_constructor_errors(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_extrap_constructor_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="Tensor gamma must be 1-element"):
        ek.ExtrapSGD(p, lr=0.1, gamma=torch.ones(3))
    with pytest.raises(ValueError, match="Invalid mode"):
        ek.ExtrapSGD(p, lr=0.1, mode="future")


def test_fused_sgd_takes_lr_from_every_group():
    """Apex's lr is `required`: param groups that all set their own lr need no default."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = ek.FusedSGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2}])
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert torch.equal(a, torch.full((2,), 0.9)) and torch.allclose(b, torch.full((2,), 0.8))
    with pytest.raises(ValueError, match="required optimization parameter lr"):
        ek.FusedSGD([{"params": [a]}])


def test_resolved_backends_say_what_runs():
    p = torch.nn.Parameter(torch.zeros(4))
    strided = torch.nn.Parameter(torch.zeros(4, 3).t())
    opt = ek.ExtrapSGD([p, strided, torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], lr=0.1)
    resolved = opt.resolved_backends()
    fused = "cpu" if "cpu" in CPU_BACKENDS else "foreach"
    assert resolved[(torch.device("cpu"), torch.float64)] == fused
    assert resolved[(torch.device("cpu"), torch.float32)] == "foreach"  # a strided parameter in the group


@every
@pytest.mark.parametrize("name", ["extrap-past", "extrap-local", "fused-sgd"])
def test_complex_parameters_step_as_torch_sgd(backend, name):
    """Complex parameters step as their real views (torch.optim's rule), with complex state; gamma 0 is
    torch.optim.SGD within fp32 rounding (our order of operations differs)."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, dtype=torch.complex64, generator=gen), torch.randn(3, generator=gen)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    options = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt = OPTIMIZERS[name](ours, backend, **options, **({} if name == "fused-sgd" else {"gamma": 0.0}))
    sgd = torch.optim.SGD(theirs, **options)
    steps = 10
    for _ in range(steps):
        grads = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in start]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if name == "extrap-local":
            opt.extrapolate()
        opt.step()
        sgd.step()
    assert opt.state[ours[0]]["momentum_buffer"].dtype == torch.complex64
    magnitude = max(
        float(torch.view_as_real(t).abs().max()) if t.is_complex() else float(t.abs().max()) for t in theirs
    )
    tolerance = trajectory_tolerance(torch.float32, steps, max(magnitude, 1.0), 0.9)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=tolerance)
