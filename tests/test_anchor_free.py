"""The anchor-free past update (SPEC "Memory-lean variants"): with heavy-ball momentum on fp32/fp64
parameters, ExtrapSGD's past mode keeps no anchor and recomputes it as s = x + last_gamma * m.

Its kernels are held to the float64 reference with every other phase (test_backends.py); here it is held
to the stored-anchor trajectory it replaces, over many steps of a changing gamma, and its state, memory,
checkpoints, skipped steps and errors are checked."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS, anchor_of, state_eps

import extrap_kernels as ek
from extrap_kernels.bucket import Phase

ALL = CPU_BACKENDS + ["reference"]
SIZES = (1, 33, 1000)
STEPS = 200
OPTIONS = dict(lr=0.05, momentum=0.9, weight_decay=1e-4)
# What separates the two runs in one step, each rounding at most eps/2 of M (the largest |s|, |x| or
# gamma*|m| of the run): the recomputation's product and sum (2), the stored run's rounding of
# x = s - gamma * m, which the recomputation takes back (1), and the two runs' own roundings of
# s - lr * m and of the new x from anchors one rounding apart (2); 6 leaves one for the weight decay's
# echo of an anchor error in m (wd * lr, far below). Errors in s are not amplified: s only accumulates.
ROUNDINGS_APART_PER_STEP = 6


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)) for n in SIZES]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def _gamma(step):
    """A schedule that changes every step, so that the last gamma is never the current one."""
    return 0.02 + 0.03 * ((step * 7) % 11) / 10


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_follows_the_stored_anchor_trajectory(backend, dtype):
    lean, lean_opt = _params(dtype), None
    stored = _params(dtype)
    lean_opt = ek.ExtrapSGD(lean, backend=backend, **OPTIONS)
    stored_opt = ek.ExtrapSGD(stored, backend=backend, store_anchor=True, **OPTIONS)
    magnitude, wrong_gamma_effect = 1.0, 0.0
    for step in range(STEPS):
        for opt, params in ((lean_opt, lean), (stored_opt, stored)):
            opt.param_groups[0]["gamma"] = _gamma(step)
            _grads(params, step)
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
    params, reference = _params(), _params()
    opt = ek.ExtrapSGD(params, backend=backend, **OPTIONS)
    sgd = torch.optim.SGD(reference, **OPTIONS)
    for step in range(2):
        _grads(params, step)
        _grads(reference, step)
        opt.step()
        sgd.step()

    def state_bytes(o, ps):
        return sum(
            t.numel() * t.element_size() for p in ps for t in o.state[p].values() if torch.is_tensor(t) and t.dim() > 0
        )

    assert state_bytes(opt, params) == state_bytes(sgd, reference) == 4 * sum(SIZES)
    assert {k for p in params for k in opt.state[p]} == {"momentum_buffer", "step", "last_gamma"}
    bf16 = _params(torch.bfloat16)  # a 16-bit parameter keeps its fp32 master anchor
    opt16 = ek.ExtrapSGD(bf16, backend=backend, **OPTIONS)
    _grads(bf16, 0)
    opt16.step()
    assert {k for p in bf16 for k in opt16.state[p]} == {"anchor", "momentum_buffer", "step"}


def _train(opt, params, steps, start=0):
    for step in range(start, start + steps):
        opt.param_groups[0]["gamma"] = _gamma(step)
        _grads(params, step)
        opt.step()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("how", ["option_switched_off", "checkpoint_without_the_option"])
def test_a_stored_anchor_checkpoint_loads_exactly(backend, how):
    """A stored-anchor state run anchor-free (the group's store_anchor set to False after loading, or a
    checkpoint from before the option, whose groups take the default) converts to x <- s and
    last_gamma <- 0, which recompute s exactly: the next step equals the stored run's bit for bit."""
    stored = _params()
    stored_opt = ek.ExtrapSGD(stored, backend=backend, store_anchor=True, **OPTIONS)
    _train(stored_opt, stored, 5)
    lean = [torch.nn.Parameter(p.detach().clone()) for p in stored]
    lean_opt = ek.ExtrapSGD(lean, backend=backend, **OPTIONS)
    saved = copy.deepcopy(stored_opt.state_dict())
    if how == "checkpoint_without_the_option":
        del saved["param_groups"][0]["store_anchor"]
    lean_opt.load_state_dict(saved)
    if how == "option_switched_off":  # load_state_dict restores the saved groups' options, this one too
        lean_opt.param_groups[0]["store_anchor"] = False
    _train(stored_opt, stored, 1, start=5)
    _train(lean_opt, lean, 1, start=5)
    for p, q in zip(lean, stored):
        assert "anchor" not in lean_opt.state[p]
        assert torch.equal(p, q)
        assert torch.equal(lean_opt.state[p]["momentum_buffer"], stored_opt.state[q]["momentum_buffer"])


@pytest.mark.parametrize("backend", ALL)
def test_an_anchor_free_checkpoint_loads_with_a_stored_anchor(backend):
    """Loaded with store_anchor=True, the anchor is recomputed once, s = x + last_gamma * m, and the run
    goes on as the anchor-free one does, a few roundings apart."""
    lean = _params()
    lean_opt = ek.ExtrapSGD(lean, backend=backend, **OPTIONS)
    _train(lean_opt, lean, 5)
    stored = [torch.nn.Parameter(p.detach().clone()) for p in lean]
    stored_opt = ek.ExtrapSGD(stored, backend=backend, store_anchor=True, **OPTIONS)
    stored_opt.load_state_dict(copy.deepcopy(lean_opt.state_dict()))
    stored_opt.param_groups[0]["store_anchor"] = True  # (the loaded group says False)
    _train(lean_opt, lean, 5, start=5)
    _train(stored_opt, stored, 5, start=5)
    magnitude = max(float(t.abs().max()) for p in stored for t in (p.detach(), stored_opt.state[p]["anchor"]))
    for p, q in zip(lean, stored):
        assert "last_gamma" not in stored_opt.state[q] and "anchor" in stored_opt.state[q]
        torch.testing.assert_close(
            p.detach(), q.detach(), rtol=0, atol=5 * ROUNDINGS_APART_PER_STEP * state_eps(torch.float32) / 2 * magnitude
        )


@pytest.mark.parametrize("backend", ALL)
def test_a_tensor_gamma_is_recorded_as_it_was(backend):
    """A capturable gamma (a tensor a schedule changes in place) is recorded as the kernels read it:
    the run equals the one with the same gammas as numbers."""
    numbers, tensors = _params(), _params()
    opt_n = ek.ExtrapSGD(numbers, backend=backend, **OPTIONS)
    gamma = torch.tensor(_gamma(0))
    opt_t = ek.ExtrapSGD(tensors, backend=backend, gamma=gamma, **OPTIONS)
    for step in range(6):
        opt_n.param_groups[0]["gamma"] = _gamma(step)
        gamma.fill_(_gamma(step))
        _grads(numbers, step)
        _grads(tensors, step)
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
