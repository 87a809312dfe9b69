"""The Adam family's anchor-free past update (SPEC "Memory-lean variants, adaptive bases and noise mode"): on
fp32/fp64 parameters ExtrapAdam's and ExtrapAdamW's past mode keeps no anchor. Each update records its weights
(r0, r1), and the next one recovers s = x + r0 * x + r1 * a from x and the moments (extrap_kernels/recovery.py).

Its kernels are held to the float64 reference with the other phases (test_adaptive_kernels.py); here it is held
to the stored-anchor trajectory it replaces, over many steps of a changing lr and gamma, on every backend, and its
state, memory, checkpoints, skipped steps and refusals are checked."""

from __future__ import annotations

import copy

import pytest
import torch
from anchor_kinds import (
    SIZES,
    check_anchor_free_checkpoint_loads_stored,
    check_stored_checkpoint_loads_exactly,
    seeded_grads,
    seeded_params,
)
from conftest import CPU_BACKENDS, state_eps

import extrap_kernels as ek
from extrap_kernels import recovery
from extrap_kernels.bucket import Phase

ALL = CPU_BACKENDS + ["reference"]
STEPS = 100
CLASSES = {"adam": ek.ExtrapAdam, "adamw": ek.ExtrapAdamW, "lamb": ek.ExtrapLAMB}
OPTIONS = dict(weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
# What separates the two runs in one step, each rounding at most eps/2 of M (the largest |s|, |x| or gamma * |e|
# of the run, |r1 * a| being at most about gamma * |e|): the recovered anchor's sum and two products (3) from
# weights that are 4 roundings off (r1 = gamma / (1 - lr wd - gamma wd), r0 = wd * r1: 5, of r1 * a and r0 * x), a
# recomputed with the kernel's own operations from the same moments (0 on the kernels; the reference's bias
# corrections are Python's, b^t, against the kernels' exp(t log b): 2), the stored run's rounding of
# x = s - gamma * e, which the recovery takes back (1), and the two runs' own roundings of s - lr * e and of x from
# anchors one rounding apart (2): 13; 16 leaves 3 for Adam's L2 echo of an anchor error in g' (wd * lr, far below)
# and LAMB's trust ratio, whose norms of anchors a few roundings apart differ relatively by as few roundings: they
# move trust * (lr + gamma) * |e| by a few roundings of that term, itself far below M (lr, gamma < 0.06).
# Errors in s are not amplified: AdamW's s shrinks by 1 - lr * wd, and a does not depend on s. (Measured: the
# worst step at 0.06 of this bound for LAMB and AdamW alike, on every CPU backend.)
ROUNDINGS_APART_PER_STEP = 16


def _rates(step):
    """An lr and a gamma that change every step, so that the last update's weights are never the current ones."""
    return 0.01 * (1 + ((step * 3) % 5) / 4), 0.02 + 0.03 * ((step * 7) % 11) / 10


def _maker(backend):
    """The optimizer of the checkpoint checks (anchor_kinds.py), with or without a stored anchor."""
    return lambda params, store_anchor: ek.ExtrapAdamW(params, store_anchor=store_anchor, backend=backend, **OPTIONS)


def _train(opt, params, steps, start=0):
    for step in range(start, start + steps):
        opt.param_groups[0]["lr"], opt.param_groups[0]["gamma"] = _rates(step)
        seeded_grads(params, step)
        opt.step()


def recovered_anchor(opt, p):
    """s of `p` as the next update recovers it, in float64."""
    st, group = opt.state[p], opt.param_groups[0]
    hyper = opt.launch_args(group)[1]
    second = st["max_exp_avg_sq"] if group.get("amsgrad") else st["exp_avg_sq"]
    r, x = st["recovery"].double(), p.detach().double()
    return recovery.recovered(x, st["exp_avg"].double(), second.double(), r, int(st["step"]), hyper)


def _trajectories_apart(backend, dtype, kind, amsgrad, steps=STEPS, **extra):
    """The largest distance of the anchor-free run's x and recovered s from the stored-anchor run's, each over
    its bound at that step, through `steps` steps (at most 1: within the bound). `extra`: more options."""
    lean, stored = seeded_params(dtype), seeded_params(dtype)
    cls = CLASSES[kind]
    options = dict(OPTIONS, backend=backend, **({} if kind == "lamb" else dict(amsgrad=amsgrad)), **extra)
    lean_opt = cls(lean, **options)
    stored_opt = cls(stored, store_anchor=True, **options)
    magnitude, worst = 1.0, 0.0
    for step in range(steps):
        _train(lean_opt, lean, 1, start=step)
        _train(stored_opt, stored, 1, start=step)
        for p, q in zip(lean, stored):
            assert "anchor" not in lean_opt.state[p] and "recovery" not in stored_opt.state[q]
            s = stored_opt.state[q]["anchor"]
            magnitude = max(magnitude, float(s.abs().max()), float(q.detach().abs().max()))
            magnitude = max(magnitude, float((q.detach() - s).abs().max()))  # (gamma * |e|)
        bound = (step + 1) * ROUNDINGS_APART_PER_STEP * state_eps(dtype) / 2 * magnitude
        for p, q in zip(lean, stored):
            x_apart = float((p.detach().double() - q.detach().double()).abs().max())
            s_apart = float((recovered_anchor(lean_opt, p) - stored_opt.state[q]["anchor"].double()).abs().max())
            worst = max(worst, x_apart / bound, s_apart / (2 * bound))
    return worst


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind, amsgrad", [("adam", False), ("adamw", False), ("adamw", True), ("lamb", False)])
def test_follows_the_stored_anchor_trajectory(backend, dtype, kind, amsgrad):
    assert _trajectories_apart(backend, dtype, kind, amsgrad) <= 1


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind, amsgrad", [("adamw", False), ("adamw", True), ("lamb", False)])
def test_16_bit_moments_follow_the_stored_anchor_trajectory(backend, kind, amsgrad):
    """With bf16 moments (exp_avg_dtype) both runs round the moments with the same bits, and the decoupled decay
    keeps them independent of the anchor: the same moments, from which the recovery takes a back as the update
    computed it, so the anchor-free run stays within the same bound (over 30 steps: the moments' rounding is
    drawn per step, not a source of separation)."""
    sixteen = dict(exp_avg_dtype=torch.bfloat16, exp_avg_sq_dtype=torch.bfloat16)
    assert _trajectories_apart(backend, torch.float32, kind, amsgrad, steps=30, **sixteen) <= 1


def test_the_bound_catches_the_bias_correction_one_step_off(monkeypatch):
    """The control: a recovery with the bias corrections of the current update instead of the last one's (the
    likeliest slip) leaves the bound far behind."""
    right = recovery.last_corrections
    monkeypatch.setattr(recovery, "last_corrections", lambda t, h: right(t + 1, h))
    assert _trajectories_apart("reference", torch.float64, "adamw", False) > 100


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_state_memory_equals_torch_adamw(backend, kind):
    """Per element, AdamW's 8 bytes (exp_avg, exp_avg_sq); per tensor, the step and the two weights."""
    params, reference = seeded_params(), seeded_params()
    opt = CLASSES[kind](params, lr=0.01, backend=backend)
    adamw = torch.optim.AdamW(reference, lr=0.01)
    for step in range(2):
        seeded_grads(params, step)
        seeded_grads(reference, step)
        opt.step()
        adamw.step()

    def per_element_bytes(o, ps):
        return sum(t.numel() * t.element_size() for p in ps for t in o.state[p].values() if t.shape == p.shape)

    assert per_element_bytes(opt, params) == per_element_bytes(adamw, reference) == 8 * sum(SIZES)
    assert {k for p in params for k in opt.state[p]} == {"exp_avg", "exp_avg_sq", "step", "recovery"}
    assert all(opt.state[p]["recovery"].shape == (2,) for p in params)
    bf16 = seeded_params(torch.bfloat16)  # a 16-bit parameter keeps its fp32 master anchor
    opt16 = CLASSES[kind](bf16, lr=0.01, backend=backend)
    seeded_grads(bf16, 0)
    opt16.step()
    assert {k for p in bf16 for k in opt16.state[p]} == {"anchor", "exp_avg", "exp_avg_sq", "step"}


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("how", ["option_switched_off", "checkpoint_without_the_option"])
def test_a_stored_anchor_checkpoint_loads_exactly(backend, how):
    check_stored_checkpoint_loads_exactly(_maker(backend), _train, how, ("exp_avg", "exp_avg_sq", "step"))


@pytest.mark.parametrize("backend", ALL)
def test_an_anchor_free_checkpoint_loads_with_a_stored_anchor(backend):
    check_anchor_free_checkpoint_loads_stored(_maker(backend), _train, "recovery", ROUNDINGS_APART_PER_STEP)


@pytest.mark.parametrize("backend", ALL)
def test_a_skipped_step_keeps_the_weights(backend):
    """found_inf set (AMP's overflow): x, the moments, the step and the weights stay as they were, and the next
    step goes on as if the skipped one had not been: equal to the run without it."""
    skipped, plain = seeded_params(), seeded_params()
    opt_s = ek.ExtrapAdamW(skipped, backend=backend, **OPTIONS)
    opt_p = ek.ExtrapAdamW(plain, backend=backend, **OPTIONS)
    _train(opt_s, skipped, 3)
    _train(opt_p, plain, 3)
    before = [p.detach().clone() for p in skipped], copy.deepcopy(opt_s.state_dict())
    opt_s.param_groups[0]["lr"], opt_s.param_groups[0]["gamma"] = 0.5, 0.5  # (weights that must not be recorded)
    seeded_grads(skipped, 99)
    opt_s.step(found_inf=torch.tensor([1.0]))
    assert all(torch.equal(p.detach(), b) for p, b in zip(skipped, before[0]))
    for i, state in before[1]["state"].items():
        assert all(torch.equal(opt_s.state_dict()["state"][i][k], v) for k, v in state.items()), i
    _train(opt_s, skipped, 2, start=3)
    _train(opt_p, plain, 2, start=3)
    assert all(torch.equal(p, q) for p, q in zip(skipped, plain))


@pytest.mark.parametrize("backend", ALL)
def test_a_tensor_lr_and_gamma_are_recorded_as_they_were(backend):
    """Capturable rates (tensors a schedule changes in place) are recorded as the kernels read them: the run
    equals the one with the same rates as numbers."""
    numbers, tensors = seeded_params(), seeded_params()
    opt_n = ek.ExtrapAdamW(numbers, backend=backend, **OPTIONS)
    lr, gamma = torch.tensor(_rates(0)[0]), torch.tensor(_rates(0)[1])
    opt_t = ek.ExtrapAdamW(tensors, lr=lr, gamma=gamma, backend=backend, **OPTIONS)
    for step in range(6):
        opt_n.param_groups[0]["lr"], opt_n.param_groups[0]["gamma"] = _rates(step)
        lr.fill_(_rates(step)[0])
        gamma.fill_(_rates(step)[1])
        seeded_grads(numbers, step)
        seeded_grads(tensors, step)
        opt_n.step()
        opt_t.step()
    for p, q in zip(numbers, tensors):
        torch.testing.assert_close(p, q, rtol=0, atol=4 * state_eps(torch.float32))
        torch.testing.assert_close(opt_n.state[p]["recovery"], opt_t.state[q]["recovery"])


def test_the_phase_is_chosen_where_it_applies():
    """Past mode drops the anchor for Adam, AdamW and LAMB, not for Adagrad (yet), other modes, store_anchor=True
    or Apex's drop-ins."""

    def phase(cls, **options):
        opt = cls([torch.nn.Parameter(torch.ones(2))], lr=0.1, **options)
        return opt.launch_args(opt.param_groups[0])[0]

    assert phase(ek.ExtrapAdam) == phase(ek.ExtrapAdamW, amsgrad=True) == Phase.UPDATE_PAST_ANCHOR_FREE
    assert phase(ek.ExtrapAdamW, maximize=True, weight_decay=0.1) == Phase.UPDATE_PAST_ANCHOR_FREE
    assert phase(ek.ExtrapLAMB) == phase(ek.ExtrapLAMB, adam_w_mode=False) == Phase.UPDATE_PAST_ANCHOR_FREE
    assert phase(ek.ExtrapAdamW, store_anchor=True) == phase(ek.ExtrapLAMB, store_anchor=True) == Phase.UPDATE_PAST
    assert phase(ek.ExtrapAdagrad) == Phase.UPDATE_PAST
    assert phase(ek.ExtrapAdamW, mode="noise") == Phase.UPDATE_NOISE
    assert phase(ek.FusedAdam) == phase(ek.FusedLAMB) == Phase.UPDATE


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")
@pytest.mark.parametrize("bad", ["anchors", "no weights", "one weight", "weights dtype", "adagrad", "novograd"])
def test_the_operator_refuses_what_it_cannot_recover(bad):
    """adam_update_past_anchor_free_ checks its launch (the Python layer never builds these) and writes nothing."""
    x, g, m, v, step = torch.ones(4), torch.ones(4), torch.ones(4), torch.ones(4), torch.tensor(3.0)
    shape, dtype = (1,) if bad == "one weight" else (2,), torch.float64 if bad == "weights dtype" else torch.float32
    weights = torch.full(shape, 0.1, dtype=dtype)
    args = dict(
        params=[x],
        grads=[g],
        anchors=[torch.ones(4)] if bad == "anchors" else [],
        momenta=[m],
        steps=[step],
        indices=[0],
        last_gammas=[] if bad == "no weights" else [weights],
        second_moments=[] if bad == "novograd" else [v],
        lr=0.1,
        gamma=0.05,
        beta1=0.0 if bad == "adagrad" else 0.9,
        beta2=1.0 if bad == "adagrad" else 0.999,
        accumulates=bad == "adagrad",
        tensor_norms=bad == "novograd",
        trust=torch.ones(1) if bad == "novograd" else None,
    )
    before = [t.clone() for t in (x, m, v, step, weights)]
    ek._ext.load()
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        torch.ops.extrap_kernels.adam_update_past_anchor_free_(**args)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, m, v, step, weights)))
