"""The cached per-step plan (extrap_kernels/plan.py) never goes stale.

Every test runs the same sequence twice: once as a user would (the plan built at the first step is
reused), and once with the plan thrown away before every step (planned anew each time: the oracle).
Between steps it changes something a plan is built from. Both runs must end bit-identical: a plan that
missed the change would keep stepping the old tensors, options or buckets, and the runs would differ.
Each test runs with the extension's identity comparisons (csrc/identity.h) and with their Python fallback.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek
from extrap_kernels import identity

SHAPES = [(4,), (2, 3), (5,)]


@pytest.fixture(autouse=True, params=["compiled", "python"])
def comparisons(request, monkeypatch):
    """The plan's identity comparisons: the extension's (where it is built), or the Python fallback."""
    if request.param == "compiled":
        if identity.comparisons() is identity.PYTHON:
            pytest.skip("the extension is not built")
    else:
        monkeypatch.setattr(identity, "comparisons", lambda: identity.PYTHON)
    return request.param


def _params(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def _grads(params, step, missing=()):
    gen = torch.Generator().manual_seed(1000 + step)
    out = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen)
        out.append(None if i in missing else g.to(p.dtype))
    return out


def _step(opt, params, grads, replan):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    if replan:
        opt._plans.clear()
    if isinstance(opt, ek.ExtrapSGD) and opt.local_groups():
        opt.extrapolate()
        if replan:
            opt._plans.clear()
    opt.step()


def _run(make, scenario, backend, steps_before=2, steps_after=3, params=_params):
    """Runs `scenario(opt, params, step)` between the steps of two identical optimizers; returns both
    (optimizer, parameters) pairs."""
    runs = []
    for replan in (False, True):
        ps = params()
        opt = make(ps, backend)
        for step in range(steps_before + steps_after):
            if step == steps_before:
                scenario(opt, ps)
            _step(opt, ps, _grads(ps, step, missing=getattr(opt, "_missing", ())), replan)
        runs.append((opt, ps))
    return runs


def _assert_same(runs):
    (a, pa), (b, pb) = runs
    for x, y in zip(pa, pb):
        assert torch.equal(x, y), "parameters differ from the run planned anew every step"
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].keys() == sb[key].keys()
        for name, value in sa[key].items():
            assert torch.equal(value, sb[key][name]), f"state {key}/{name} differs"
    pga = [{k: v for k, v in g.items() if k != "params"} for g in a.param_groups]
    pgb = [{k: v for k, v in g.items() if k != "params"} for g in b.param_groups]
    assert pga == pgb


def extrap(**kwargs):
    def make(params, backend):
        return ek.ExtrapSGD(params, lr=0.1, momentum=0.9, backend=backend, **{"gamma": 0.05, **kwargs})

    return make


def fused(**kwargs):
    def make(params, backend):
        return ek.FusedSGD(params, lr=0.1, backend=backend, **kwargs)

    return make


over = pytest.mark.parametrize("backend", CPU_BACKENDS)


@over
@pytest.mark.parametrize("mode", ["past", "local", "noise"])
def test_add_param_group(backend, mode):
    extra = torch.nn.Parameter(torch.randn(3))

    def scenario(opt, params):
        params.append(copy.deepcopy(extra))
        opt.add_param_group({"params": [params[-1]], "lr": 0.05})

    _assert_same(_run(extrap(mode=mode), scenario, backend))


@over
def test_params_list_edited_in_place(backend):
    def scenario(opt, params):
        removed = opt.param_groups[0]["params"].pop(0)
        params.remove(removed)
        del opt.state[removed]  # (torch's state_dict() needs every state entry to be a parameter's)
        params.append(torch.nn.Parameter(torch.randn(7, generator=torch.Generator().manual_seed(5))))
        opt.param_groups[0]["params"].append(params[-1])

    _assert_same(_run(extrap(), scenario, backend))


@over
def test_load_state_dict(backend):
    donor_params = _params(seed=3)
    donor = ek.ExtrapSGD(donor_params, lr=0.3, momentum=0.5, gamma=0.1, backend="reference")
    for step in range(3):
        _step(donor, donor_params, _grads(donor_params, 50 + step), replan=False)
    saved = donor.state_dict()

    def scenario(opt, params):
        opt.load_state_dict(copy.deepcopy(saved))

    _assert_same(_run(extrap(), scenario, backend))


@over
@pytest.mark.parametrize("change", ["gains", "loses"])
def test_a_parameter_gains_or_loses_its_gradient(backend, change):
    def make(params, b):
        opt = extrap()(params, b)
        opt._missing = (1,) if change == "gains" else ()
        return opt

    def scenario(opt, params):
        opt._missing = () if change == "gains" else (1,)

    _assert_same(_run(make, scenario, backend))


@over
@pytest.mark.parametrize(
    "option, value",
    [
        ("lr", 0.02),
        ("gamma", 0.3),
        ("gamma", None),
        ("momentum", 0.5),
        ("momentum", 0.0),
        ("dampening", 0.1),
        ("weight_decay", 1e-2),
        ("nesterov", True),
        ("maximize", True),
        ("mode", "noise"),
        ("mode", "local"),
        ("past", "grad"),
        ("lars", True),
        ("noise_std", 0.5),
        ("seed", 7),
        ("store_anchor", True),
    ],
)
def test_a_changed_group_option(backend, option, value):
    def scenario(opt, params):
        for group in opt.param_groups:
            group[option] = value

    mode = "noise" if option in ("noise_std", "seed") else "past"
    _assert_same(_run(extrap(mode=mode), scenario, backend))


@over
@pytest.mark.parametrize("option, value", [("store_anchor", False), ("nesterov", False), ("lars", False)])
def test_a_group_option_that_drops_the_stored_anchor(backend, option, value):
    """From a stored anchor to the anchor-free past update (the state converted at the next plan)."""

    def scenario(opt, params):
        for group in opt.param_groups:
            group[option] = value

    _assert_same(
        _run(
            extrap(store_anchor=option == "store_anchor", nesterov=option == "nesterov", lars=option == "lars"),
            scenario,
            backend,
        )
    )


@over
def test_momentum_switched_on(backend):
    def scenario(opt, params):
        opt.param_groups[0]["momentum"] = 0.9

    _assert_same(_run(fused(), scenario, backend))


@over
@pytest.mark.parametrize("how", ["in_place", "new_tensor"])
def test_a_tensor_lr(backend, how):
    def make(params, b):
        return ek.ExtrapSGD(params, lr=torch.tensor(0.1), gamma=torch.tensor(0.05), momentum=0.9, backend=b)

    def scenario(opt, params):
        group = opt.param_groups[0]
        if how == "in_place":
            group["lr"].fill_(0.03)  # what an LR scheduler does to a tensor lr
        else:
            group["lr"] = torch.tensor(0.03)

    _assert_same(_run(make, scenario, backend))


@over
def test_a_tensor_lr_of_another_dtype_is_read_every_step(backend):
    """A float64 lr is converted to the fp32 state dtype for the kernels, a copy: the copy must be made
    again each step, or an in-place schedule would be missed."""

    def make(params, b):
        return ek.ExtrapSGD(params, lr=torch.tensor(0.1, dtype=torch.float64), momentum=0.9, backend=b)

    def scenario(opt, params):
        opt.param_groups[0]["lr"].fill_(0.01)

    _assert_same(_run(make, scenario, backend))


@over
@pytest.mark.parametrize("key", ["anchor", "momentum_buffer", "step", "last_gamma"])
def test_a_state_tensor_replaced(backend, key):
    def scenario(opt, params):
        state = opt.state[params[1]]
        state[key] = torch.zeros_like(state[key])

    _assert_same(_run(extrap(store_anchor=key == "anchor"), scenario, backend))


@over
@pytest.mark.parametrize("how", ["delete_one", "clear", "new_dict"])
def test_state_deleted(backend, how):
    def scenario(opt, params):
        if how == "delete_one":
            del opt.state[params[0]]
        elif how == "clear":
            opt.state.clear()
        else:
            opt.state[params[2]] = {}

    _assert_same(_run(extrap(), scenario, backend))


@over
def test_a_parameter_reallocated(backend):
    """`p.data = ...` gives the parameter new storage: the kernels must write the new one."""

    def scenario(opt, params):
        for p in params:
            p.data = p.data.clone() * 0.5

    _assert_same(_run(extrap(), scenario, backend))


@over
def test_a_parameter_reallocated_with_another_dtype(backend):
    """A parameter that becomes fp64 (its gradients too) moves to an fp64 bucket; FusedSGD without
    momentum keeps no dtype-bound state, so the step goes on."""

    def make(params, b):
        opt = fused()(params, b)
        return opt

    def scenario(opt, params):
        params[1].data = params[1].data.double()

    _assert_same(_run(make, scenario, backend))


@over
def test_a_parameter_reallocated_against_its_state_is_refused(backend):
    """An fp64 parameter whose fp32 anchor and momentum stay refuses the step with the Python layer's
    message, as a freshly planned step would, and writes nothing."""
    params = _params()
    opt = extrap()(params, backend)
    _step(opt, params, _grads(params, 0), replan=False)
    params[1].data = params[1].data.double()
    params[1].grad = torch.ones(params[1].shape, dtype=torch.float64)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="param 1 .*state 'momentum_buffer' is torch.float32"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


@over
def test_backend_changed(backend):
    def scenario(opt, params):
        opt.backend = "foreach"

    _assert_same(_run(extrap(), scenario, backend))


def test_the_plan_is_reused():
    """Nothing above would notice a plan rebuilt every step: the cache does hold."""
    params = _params()
    opt = extrap()(params, "auto")
    _step(opt, params, _grads(params, 0), replan=False)
    plan = opt._plans[None]
    for step in range(1, 4):
        _step(opt, params, _grads(params, step), replan=False)
        opt.param_groups[0]["lr"] *= 0.5  # a schedule: retunes the plan, does not replace it
    assert opt._plans[None] is plan
