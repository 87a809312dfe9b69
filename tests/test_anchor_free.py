"""The anchor-free past update (SPEC "Memory-lean variants"): with heavy-ball momentum on fp32/fp64
parameters, ExtrapSGD's past mode keeps no anchor and recomputes it as s = x + last_gamma * m.

Its kernels are held to the float64 reference with every other phase (test_backends.py); here it is held
to the stored-anchor trajectory it replaces, over many steps of a changing gamma, and its state, memory,
checkpoints, skipped steps and errors are checked."""

from __future__ import annotations

import pytest
import torch
from anchor_kinds import (
    SIZES,
    check_anchor_free_checkpoint_loads_stored,
    check_stored_checkpoint_loads_exactly,
    seeded_grads,
    seeded_params,
)
from conftest import CPU_BACKENDS, anchor_of, state_eps

import extrap_kernels as ek
from extrap_kernels.bucket import Phase

ALL = CPU_BACKENDS + ["reference"]
STEPS = 200
OPTIONS = dict(lr=0.05, momentum=0.9, weight_decay=1e-4)
# What separates the two runs in one step, each rounding at most eps/2 of M (the largest |s|, |x| or
# gamma*|m| of the run): the recomputation's product and sum (2), the stored run's rounding of
# x = s - gamma * m, which the recomputation takes back (1), and the two runs' own roundings of
# s - lr * m and of the new x from anchors one rounding apart (2); 6 leaves one for the weight decay's
# echo of an anchor error in m (wd * lr, far below). Errors in s are not amplified: s only accumulates.
ROUNDINGS_APART_PER_STEP = 6


def _gamma(step):
    """A schedule that changes every step, so that the last gamma is never the current one."""
    return 0.02 + 0.03 * ((step * 7) % 11) / 10


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_follows_the_stored_anchor_trajectory(backend, dtype):
    lean, lean_opt = seeded_params(dtype), None
    stored = seeded_params(dtype)
    lean_opt = ek.ExtrapSGD(lean, backend=backend, **OPTIONS)
    stored_opt = ek.ExtrapSGD(stored, backend=backend, store_anchor=True, **OPTIONS)
    magnitude, wrong_gamma_effect = 1.0, 0.0
    for step in range(STEPS):
        for opt, params in ((lean_opt, lean), (stored_opt, stored)):
            opt.param_groups[0]["gamma"] = _gamma(step)
            seeded_grads(params, step)
            opt.step()
        for p, q in zip(lean, stored):
            m = stored_opt.state[q]["momentum_buffer"]
            magnitude = max(
                magnitude,
                float(stored_opt.state[q]["anchor"].abs().max()),
                float(q.detach().abs().max()),
                _gamma(step) * float(m.abs().max()),
            )
            # what recomputing with the current gamma instead of the last one would have been off by
            wrong_gamma_effect = max(wrong_gamma_effect, abs(_gamma(step + 1) - _gamma(step)) * float(m.abs().max()))
        bound = (step + 1) * ROUNDINGS_APART_PER_STEP * state_eps(dtype) / 2 * magnitude
        for i, (p, q) in enumerate(zip(lean, stored)):
            assert "anchor" not in lean_opt.state[p] and float(lean_opt.state[p]["last_gamma"]) == pytest.approx(
                _gamma(step), rel=state_eps(dtype)
            )
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=bound, msg=f"step {step} x {i}")
            torch.testing.assert_close(
                anchor_of(lean_opt.state[p], p),
                stored_opt.state[q]["anchor"].double(),
                rtol=0,
                atol=2 * bound,
                msg=f"step {step} anchor {i}",
            )
    assert bound < wrong_gamma_effect / 100  # the bound is tight enough to catch the wrong gamma


@pytest.mark.parametrize("backend", ALL)
def test_state_memory_equals_torch_sgd(backend):
    params, reference = seeded_params(), seeded_params()
    opt = ek.ExtrapSGD(params, backend=backend, **OPTIONS)
    sgd = torch.optim.SGD(reference, **OPTIONS)
    for step in range(2):
        seeded_grads(params, step)
        seeded_grads(reference, step)
        opt.step()
        sgd.step()

    def state_bytes(o, ps):
        return sum(
            t.numel() * t.element_size() for p in ps for t in o.state[p].values() if torch.is_tensor(t) and t.dim() > 0
        )

    assert state_bytes(opt, params) == state_bytes(sgd, reference) == 4 * sum(SIZES)
    assert {k for p in params for k in opt.state[p]} == {"momentum_buffer", "step", "last_gamma"}
    bf16 = seeded_params(torch.bfloat16)  # a 16-bit parameter keeps its fp32 master anchor
    opt16 = ek.ExtrapSGD(bf16, backend=backend, **OPTIONS)
    seeded_grads(bf16, 0)
    opt16.step()
    assert {k for p in bf16 for k in opt16.state[p]} == {"anchor", "momentum_buffer", "step"}


def _maker(backend):
    """The optimizer of the checkpoint checks (anchor_kinds.py), with or without a stored anchor."""
    return lambda params, store_anchor: ek.ExtrapSGD(params, store_anchor=store_anchor, backend=backend, **OPTIONS)


def _train(opt, params, steps, start=0):
    for step in range(start, start + steps):
        opt.param_groups[0]["gamma"] = _gamma(step)
        seeded_grads(params, step)
        opt.step()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("how", ["option_switched_off", "checkpoint_without_the_option"])
def test_a_stored_anchor_checkpoint_loads_exactly(backend, how):
    check_stored_checkpoint_loads_exactly(_maker(backend), _train, how, ("momentum_buffer",))


@pytest.mark.parametrize("backend", ALL)
def test_an_anchor_free_checkpoint_loads_with_a_stored_anchor(backend):
    check_anchor_free_checkpoint_loads_stored(_maker(backend), _train, "last_gamma", ROUNDINGS_APART_PER_STEP)


@pytest.mark.parametrize("backend", ALL)
def test_a_tensor_gamma_is_recorded_as_it_was(backend):
    """A capturable gamma (a tensor a schedule changes in place) is recorded as the kernels read it:
    the run equals the one with the same gammas as numbers."""
    numbers, tensors = seeded_params(), seeded_params()
    opt_n = ek.ExtrapSGD(numbers, backend=backend, **OPTIONS)
    gamma = torch.tensor(_gamma(0))
    opt_t = ek.ExtrapSGD(tensors, backend=backend, gamma=gamma, **OPTIONS)
    for step in range(6):
        opt_n.param_groups[0]["gamma"] = _gamma(step)
        gamma.fill_(_gamma(step))
        seeded_grads(numbers, step)
        seeded_grads(tensors, step)
        opt_n.step()
        opt_t.step()
    for p, q in zip(numbers, tensors):
        assert torch.equal(p, q)
        assert torch.equal(opt_n.state[p]["last_gamma"], opt_t.state[q]["last_gamma"])


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")
@pytest.mark.parametrize(
    "bad", ["nesterov", "past_grad", "16-bit", "anchors", "no last gammas", "no momentum", "last gamma dtype"]
)
def test_the_operator_refuses_what_it_cannot_recompute(bad):
    """update_past_anchor_free_ checks its launch (the Python layer never builds these) and writes nothing."""
    dtype = torch.bfloat16 if bad == "16-bit" else torch.float32
    x, g = torch.ones(4, dtype=dtype), torch.ones(4, dtype=dtype)
    m, step = torch.ones(4), torch.tensor(3.0)
    last = torch.tensor(0.1, dtype=torch.float64 if bad == "last gamma dtype" else torch.float32)
    args = dict(
        params=[x],
        grads=[g],
        anchors=[torch.ones(4)] if bad == "anchors" else [],
        momenta=[] if bad == "no momentum" else [m],
        steps=[step],
        indices=[0],
        last_gammas=[] if bad == "no last gammas" else [last],
        lr=0.1,
        gamma=0.05,
        momentum=0.0 if bad == "no momentum" else 0.9,
        nesterov=bad == "nesterov",
        past_grad=bad == "past_grad",
    )
    before = [t.clone() for t in (x, m, step, last)]
    ek._ext.load()
    with pytest.raises((ValueError, TypeError)):
        torch.ops.extrap_kernels.update_past_anchor_free_(**args)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, m, step, last)))


def test_the_phase_is_chosen_where_it_applies():
    """Past mode drops the anchor exactly where d = m: not with Nesterov, LARS, past='grad', momentum 0,
    other modes or store_anchor=True."""

    def phase(**options):
        opt = ek.ExtrapSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, **options)
        return opt.launch_args(opt.param_groups[0])[0]

    assert phase(momentum=0.9) == Phase.UPDATE_PAST_ANCHOR_FREE
    assert phase(momentum=0.9, dampening=0.5, weight_decay=0.1, maximize=True) == Phase.UPDATE_PAST_ANCHOR_FREE
    for options in (
        dict(),
        dict(momentum=0.9, nesterov=True),
        dict(momentum=0.9, lars=True),
        dict(momentum=0.9, past="grad"),
        dict(momentum=0.9, store_anchor=True),
    ):
        assert phase(**options) == Phase.UPDATE_PAST, options
    assert phase(momentum=0.9, mode="noise") == Phase.UPDATE_NOISE
    with pytest.raises(TypeError, match="store_anchor"):
        ek.ExtrapSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, store_anchor="yes")
