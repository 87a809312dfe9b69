"""16-bit parameters without an fp32 master (master_weights=False, SPEC "Memory-lean variants"): x, the
anchor and the momentum stay in bf16/fp16 and every stored value is rounded stochastically with Philox
bits keyed apart from the noise mode's.

Every backend draws the same bits and rounds with the same bit-level rule (csrc/extrap_math.h,
extrap_kernels/rounding.py, the Triton kernel), so a backend equals the reference element for element
except where its own fp32 rounding of a value moved it across the random threshold: at most one 16-bit
ulp, for a handful of elements. The rounding itself is tested for what it promises: unbiased (the mean
of many rounded trajectories is the fp32 trajectory), deterministic for a seed, and independent of the
launch layout."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import CPU_BACKENDS

import extrap_kernels as ek
from extrap_kernels import rounding

ALL = CPU_BACKENDS + ["reference"]
SIXTEEN = [torch.bfloat16, torch.float16]
SIZES = (1, 33, 1000)
OPTIONS = dict(lr=0.05, gamma=0.02, momentum=0.9, weight_decay=1e-3, seed=11)


def _params(dtype, seed=0, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]


def _grads(params, step, scale=1.0):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * scale).to(p.dtype)


def _make(kind, params, backend, **extra):
    if kind == "fused-sgd":
        return ek.FusedSGD(
            params, lr=0.05, momentum=0.9, weight_decay=1e-3, seed=11, master_weights=False, backend=backend, **extra
        )
    return ek.ExtrapSGD(params, mode=kind, master_weights=False, backend=backend, **OPTIONS, **extra)


def _train(kind, opt, params, steps, start=0):
    for step in range(start, start + steps):
        _grads(params, step)
        if kind == "local":
            opt.extrapolate()
            _grads(params, 1000 + step)
        opt.step()


KINDS = ["past", "local", "noise", "fused-sgd"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_every_backend_rounds_as_the_reference(backend, kind, dtype):
    ours, oracle = _params(dtype), _params(dtype)
    opt, ref = _make(kind, ours, backend), _make(kind, oracle, "reference")
    steps = 10
    _train(kind, opt, ours, steps)
    _train(kind, ref, oracle, steps)
    total = sum(p.numel() for p in ours)
    for p, q in zip(ours, oracle):
        for a, b in [(p.detach(), q.detach())] + [
            (opt.state[p][k], ref.state[q][k]) for k in ("anchor", "momentum_buffer") if k in opt.state[p]
        ]:
            _assert_rounded_alike(a, b, dtype, steps, total)


def _assert_rounded_alike(a, b, dtype, steps: int, total: int) -> None:
    """Two stochastically rounded 16-bit values of one backend and the reference after `steps` steps: a value
    the two computed one fp32 rounding apart lands on the other neighbour only if the random threshold falls
    between them (~2^-16 per stored value); the difference it leaves then grows with the steps it is carried
    for: allow a few per thousand of the `total` elements, each a few ulps of the value."""
    assert a.dtype == dtype == b.dtype
    apart = (a.float() - b.float()).abs()
    assert int((apart > 0).sum()) <= max(3, total // 300), f"{int((apart > 0).sum())} of {a.numel()} differ"
    assert bool((apart <= 4 * steps * torch.finfo(dtype).eps * b.float().abs().clamp_min(1.0)).all())


@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_rounding_is_unbiased_and_lands_on_a_neighbour(dtype):
    """Many roundings of the same values: each lands on one of the two 16-bit neighbours, and their mean is
    the fp32 value. The mean of n draws has standard deviation <= ulp / (2 sqrt(n)); a 6-sigma bound fails
    by chance with probability ~2e-9 per value."""
    gen = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(64, generator=gen) * 10.0**e for e in (-6, -2, 0, 2)])
    if dtype == torch.float16:
        values = torch.cat([values, torch.tensor([3e-8, -5e-8, 1e-5, 6e4])])  # subnormal and near-max fp16
    draws = 4096
    element = torch.arange(values.numel() * draws, dtype=torch.int64)
    bits = rounding.philox.noise_bits(7 ^ rounding.ROUNDING_KEY, torch.tensor(1), torch.tensor(0), element)[0]
    rounded = rounding.stochastic_round(values.repeat(draws), dtype, bits).float().view(draws, -1)
    lower = values.to(dtype).float()
    nearest_down = torch.where(
        lower > values, torch.nextafter(lower.to(dtype), torch.tensor(-math.inf, dtype=dtype)).float(), lower
    )
    gap = torch.nextafter(nearest_down.to(dtype), torch.tensor(math.inf, dtype=dtype)).float() - nearest_down
    on_neighbour = (rounded == nearest_down) | (rounded == nearest_down + gap)
    assert bool(on_neighbour.all())
    bias = (rounded.double().mean(0) - values.double()).abs()
    assert bool((bias <= 6 * gap.double() / (2 * math.sqrt(draws)) + 1e-12).all()), float((bias / gap).max())
    # and the test can fail: rounding to nearest is biased by up to half a gap on these values
    nearest_bias = (values.to(dtype).double() - values.double()).abs()
    assert bool((nearest_bias > 6 * gap.double() / (2 * math.sqrt(draws))).any())


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_mean_of_rounded_trajectories_is_the_fp32_trajectory(backend, dtype):
    """Updates far below the 16-bit spacing still move the parameters on average: lr * g ~ 1e-4 of |x| ~ 1,
    a sixteenth of a bf16 ulp, which rounding to nearest would lose entirely. Over R independent runs
    (seeds) the mean of x after T steps matches the fp32-master run to its standard error: each stored
    value carries rounding noise of variance <= ulp^2 / 4 per step, so the mean of R runs has standard
    deviation <= ulp * sqrt(T / R) / 2 per element; 6 of them bound it (false failure ~2e-9 per element)."""
    sizes, steps, runs = (64,), 8, 48
    options = dict(lr=1e-4, momentum=0.0, mode="past", gamma=0.0)
    master = _params(dtype, sizes=sizes)
    opt = ek.ExtrapSGD(master, backend=backend, **options)
    gen = torch.Generator().manual_seed(3)
    grads = [torch.ones(sizes[0]) + 0.1 * torch.randn(sizes[0], generator=gen) for _ in range(steps)]
    for g in grads:
        master[0].grad = g.to(dtype)
        opt.step()
    fp32 = opt.state[master[0]]["anchor"].double()
    means = torch.zeros(sizes[0], dtype=torch.float64)
    for seed in range(runs):
        params = _params(dtype, sizes=sizes)
        lean = ek.ExtrapSGD(params, backend=backend, master_weights=False, seed=seed, **options)
        for g in grads:
            params[0].grad = g.to(dtype)
            lean.step()
        means += params[0].detach().double() / runs
    ulp = torch.finfo(dtype).eps * fp32.abs().clamp_min(2.0**-14)
    start = _params(dtype, sizes=sizes)[0].detach().double()
    assert bool(((means - fp32).abs() <= 6 * ulp * math.sqrt(steps / runs) / 2).all())
    assert bool(((fp32 - start).abs() > 6 * ulp * math.sqrt(steps / runs) / 2).any())  # it did move
    nearest = _params(dtype, sizes=sizes)
    plain = torch.optim.SGD(nearest, lr=1e-4)  # bf16 SGD rounded to nearest: the updates are lost
    for g in grads:
        nearest[0].grad = g.to(dtype)
        plain.step()
    assert bool(((nearest[0].detach().double() - fp32).abs() > 6 * ulp * math.sqrt(steps / runs) / 2).any())


LEAN = dict(lr=1e-4, gamma=1e-3, weight_decay=0.0)
MOMENTUM = 0.9


def _lean(kind, params, backend, **extra):
    """The anchor-free past mode with extrapolation on, weight decay off (the direction does not depend on x)."""
    if kind == "sgd":
        return ek.ExtrapSGD(params, momentum=MOMENTUM, backend=backend, **LEAN, **extra)
    return ek.ExtrapAdamW(params, backend=backend, **LEAN, **extra)


def _directions(kind, grads):
    """The past direction of each step, float64, from the gradients alone: SGD's momentum m, AdamW's a."""
    m, v, out = torch.zeros_like(grads[0]), torch.zeros_like(grads[0]), []
    for t, g in enumerate(grads, start=1):
        if kind == "sgd":
            m = g.clone() if t == 1 else MOMENTUM * m + g
            out.append(m)
        else:
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            out.append((m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8))
    return out


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_anchor_free_without_a_master_keeps_updates_on_average(backend, kind):
    """bf16 x without a master in the anchor-free past mode: each anchor is recovered from the stochastically
    rounded x (SGD: s = x + gamma * m; AdamW: from x, the moments and the recorded weights), so every rounding of x
    is carried into the anchor; being unbiased, the mean of R seeded runs is still the fp32 trajectory, with lr * e
    a sixteenth of a bf16 ulp. Without weight decay the dynamics are linear in the rounded values, so the mean is
    exact and only the variance grows: x's rounding, <= ulp_x^2 / 4 a step, and SGD's bf16 momentum's, <= ulp_m^2 /
    4, which reaches the anchor through gamma + lr / (1 - momentum). 6 standard errors of the mean bound it (false
    failure ~2e-9 per element); the same iteration rounded to nearest (the control) exceeds the bound."""
    sizes, steps, runs = (64,), 8, 48
    gen = torch.Generator().manual_seed(3)
    grads = [(torch.ones(sizes[0]) + 0.1 * torch.randn(sizes[0], generator=gen)).bfloat16() for _ in range(steps)]
    start = _params(torch.bfloat16, sizes=sizes)[0].detach()

    def trajectory(opt, param):
        for g in grads:
            param.grad = g.to(param.dtype)
            opt.step()
        return param.detach().double()

    full = torch.nn.Parameter(start.float())
    fp32 = trajectory(_lean(kind, [full], backend), full)
    means = torch.zeros(sizes[0], dtype=torch.float64)
    for seed in range(runs):
        param = torch.nn.Parameter(start.clone())
        opt = _lean(kind, [param], backend, master_weights=False, seed=seed)
        means += trajectory(opt, param) / runs
        assert "anchor" not in opt.state[param]  # (recovered from the bf16 x)
    eps = torch.finfo(torch.bfloat16).eps
    # (a bound on the spacing wherever x went: |x| <= max(|start|, |end|) + the drift and the jump gamma * e)
    ulp_x = eps * (torch.maximum(start.double().abs(), fp32.abs()) + 2e-3).clamp_min(2.0**-14)
    directions = _directions(kind, [g.double() for g in grads])
    ulp_m = eps * max(float(e.abs().max()) for e in directions) if kind == "sgd" else 0.0
    carried = LEAN["gamma"] + LEAN["lr"] / (1 - MOMENTUM)
    bound = 6 * torch.sqrt(steps * (ulp_x**2 + (carried * ulp_m) ** 2) / 4 / runs)
    assert bool(((means - fp32).abs() <= bound).all())
    assert bool(((fp32 - start.double()).abs() > bound).any())  # it did move
    x, previous = start.clone(), torch.zeros(sizes[0], dtype=torch.float64)  # the control: rounded to nearest
    for e in directions:
        s = x.double() + LEAN["gamma"] * previous - LEAN["lr"] * e
        x, previous = (s - LEAN["gamma"] * e).bfloat16(), e
    assert bool(((x.double() - fp32).abs() > bound).any())


@pytest.mark.parametrize("backend", ALL)
def test_deterministic_for_a_seed_and_apart_from_the_noise(backend):
    runs = []
    for seed in (11, 11, 12):
        params = _params(torch.bfloat16)
        opt = ek.ExtrapSGD(params, mode="past", master_weights=False, backend=backend, **{**OPTIONS, "seed": seed})
        _train("past", opt, params, 3)
        runs.append(torch.cat([p.detach().float() for p in params]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    element = torch.arange(1000)
    noise = rounding.philox.noise_bits(11, torch.tensor(1), torch.tensor(0), element)
    rounds = rounding.philox.noise_bits(11 ^ rounding.ROUNDING_KEY, torch.tensor(1), torch.tensor(0), element)
    assert not bool((noise[0] == rounds[0]).any())  # the rounding bits are not the noise's


@pytest.mark.parametrize("backend", ALL)
def test_the_launch_layout_does_not_change_the_bits(backend):
    """The same parameters stepped in one bucket or one per param group round alike."""
    together, apart = _params(torch.bfloat16), _params(torch.bfloat16)
    opt_a = ek.ExtrapSGD(together, master_weights=False, backend=backend, **OPTIONS)
    opt_b = ek.ExtrapSGD([{"params": [p]} for p in apart], master_weights=False, backend=backend, **OPTIONS)
    _train("past", opt_a, together, 3)
    _train("past", opt_b, apart, 3)
    for p, q in zip(together, apart):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("store_anchor", [False, True])
def test_state_bytes_and_checkpoints(backend, store_anchor):
    """bf16 without a master holds 4 bytes per parameter element in the anchor-free past mode (x, m: SGD's, the
    anchor recomputed from the bf16 x) and 6 with store_anchor=True (x, s, m), instead of 10; its state_dict
    resumes bit-exactly; found_inf changes nothing."""
    params = _params(torch.bfloat16)
    make = lambda ps: _make("past", ps, backend, store_anchor=store_anchor)  # noqa: E731
    opt = make(params)
    _train("past", opt, params, 3)
    assert _bytes_per_element(opt, params) == (6 if store_anchor else 4)
    opt2, resumed = _resumes_and_skips(opt, params, make, _train, "past")
    assert ("anchor" in opt2.state[resumed[0]]) == store_anchor
    assert opt2.state[resumed[0]]["momentum_buffer"].dtype == torch.bfloat16


def _resumes_and_skips(opt, params, make, train, kind):
    """opt's state_dict, loaded into make(copies of params), resumes bit-exactly over 2 steps of train(kind, ...);
    then a step that found_inf skips changes neither x nor the state. Returns the resumed optimizer and params."""
    saved = copy.deepcopy((params, opt.state_dict()))
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in saved[0]]
    opt2 = make(resumed)
    opt2.load_state_dict(saved[1])
    train(kind, opt, params, 2, start=3)
    train(kind, opt2, resumed, 2, start=3)
    assert all(torch.equal(p, q) for p, q in zip(params, resumed)), kind
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])
    _grads(params, 9)
    opt.step(found_inf=torch.tensor([1.0]))
    assert all(torch.equal(a, p) for a, p in zip(before[0], params))
    for key, state in opt.state_dict()["state"].items():
        assert all(torch.equal(v, before[1][key][k]) for k, v in state.items())
    return opt2, resumed


@pytest.mark.parametrize("backend", ALL)
def test_switching_master_weights_converts_the_state(backend):
    params = _params(torch.bfloat16)
    opt = ek.ExtrapSGD(params, backend=backend, **OPTIONS)
    _train("past", opt, params, 2)
    opt.param_groups[0]["master_weights"] = False
    _train("past", opt, params, 1, start=2)  # (anchor-free without a master: the master became x)
    assert {k: t.dtype for k, t in opt.state[params[0]].items()} == {
        "step": torch.float32,
        "momentum_buffer": torch.bfloat16,
        "last_gamma": torch.float32,
    }
    opt.param_groups[0]["master_weights"] = True
    _train("past", opt, params, 1, start=3)
    assert {t.dtype for p in params for k, t in opt.state[p].items() if k != "step"} == {torch.float32}
    with pytest.raises(TypeError, match="master_weights"):
        ek.ExtrapSGD(params, lr=0.1, master_weights="no")


# ---- the adaptive bases (Adam, AdamW, LAMB and Apex's FusedAdam, FusedLAMB) ---------------------------------
# Without a master a 16-bit x is updated in place (the drop-ins) or keeps a 16-bit anchor (the Extrap classes);
# the moments stay fp32, as Apex's FusedAdam keeps them, and only x and the anchor are rounded stochastically.
ADAPTIVE_KINDS = ["adam-past", "adam-local", "adam-noise", "lamb-past", "lamb-local", "fused-adam", "fused-lamb"]
ADAPTIVE_OPTIONS = dict(lr=1e-2, weight_decay=1e-2)


def _make_adaptive(kind, params, backend, **extra):
    options = {**ADAPTIVE_OPTIONS, "backend": backend, **extra}
    if kind == "fused-adam":
        return ek.FusedAdam(params, **options)  # (Apex's default: master_weights=False)
    if kind == "fused-lamb":
        return ek.FusedLAMB(params, **options)
    base, mode = kind.split("-")
    cls = ek.ExtrapAdamW if base == "adam" else ek.ExtrapLAMB
    options.setdefault("master_weights", False)
    return cls(params, mode=mode, gamma=0.02, seed=11, **options)


def _train_adaptive(kind, opt, params, steps, start=0):
    _train(kind.split("-")[-1], opt, params, steps, start)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ADAPTIVE_KINDS)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_adaptive_backends_round_as_the_reference(backend, kind, dtype):
    """As test_every_backend_rounds_as_the_reference: x and the anchor element for element but for a few
    threshold crossings; the fp32 moments to a few fp32 roundings of each step's (as the kernels' tests bound
    them), since the rounded x they are computed from is the same."""
    ours, oracle = _params(dtype), _params(dtype)
    opt, ref = _make_adaptive(kind, ours, backend), _make_adaptive(kind, oracle, "reference")
    steps = 8
    _train_adaptive(kind, opt, ours, steps)
    _train_adaptive(kind, ref, oracle, steps)
    total = sum(p.numel() for p in ours)
    for p, q in zip(ours, oracle):
        # the drop-ins keep none, nor does the anchor-free past mode (recovered from the 16-bit x)
        assert ("anchor" in opt.state[p]) == (kind in ("adam-local", "adam-noise", "lamb-local"))
        _assert_rounded_alike(p.detach(), q.detach(), dtype, steps, total)
        if "anchor" in opt.state[p]:
            _assert_rounded_alike(opt.state[p]["anchor"], ref.state[q]["anchor"], dtype, steps, total)
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = opt.state[p][key], ref.state[q][key]
            assert a.dtype == torch.float32 == b.dtype
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max())), key


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_fused_adam_without_a_master_keeps_updates_on_average(backend, dtype):
    """FusedAdam on 16-bit parameters without a master (Apex's default) moves x by lr ~ 1e-4 per step, a
    sixteenth of a bf16 ulp at |x| ~ 1: rounded to nearest (as Apex and torch.optim.Adam store a bf16 x) the
    updates are lost; rounded stochastically the mean of R seeded runs is the fp32-master trajectory. Without
    weight decay the moments do not depend on x, so every run takes the same fp32 steps and only the rounding
    of x differs: variance <= ulp^2 / 4 per step, 6 standard errors bound the mean (false failure ~2e-9 per
    element), and the nearest-rounding control exceeds that bound."""
    sizes, steps, runs = (64,), 8, 48
    gen = torch.Generator().manual_seed(3)
    grads = [torch.ones(sizes[0]) + 0.1 * torch.randn(sizes[0], generator=gen) for _ in range(steps)]

    def trajectory(opt, params):
        for g in grads:
            params[0].grad = g.to(dtype)
            opt.step()

    master = _params(dtype, sizes=sizes)
    opt = ek.FusedAdam(master, lr=1e-4, master_weights=True, backend=backend)
    trajectory(opt, master)
    fp32 = opt.state[master[0]]["anchor"].double()
    means = torch.zeros(sizes[0], dtype=torch.float64)
    for seed in range(runs):
        params = _params(dtype, sizes=sizes)
        lean = ek.FusedAdam(params, lr=1e-4, backend=backend)
        lean.param_groups[0]["seed"] = seed  # (the rounding's key: the group's seed)
        trajectory(lean, params)
        means += params[0].detach().double() / runs
    ulp = torch.finfo(dtype).eps * fp32.abs().clamp_min(2.0**-14)
    bound = 6 * ulp * math.sqrt(steps / runs) / 2
    start = _params(dtype, sizes=sizes)[0].detach().double()
    assert bool(((means - fp32).abs() <= bound).all())
    assert bool(((fp32 - start).abs() > bound).any())  # it did move
    nearest = _params(dtype, sizes=sizes)
    trajectory(torch.optim.Adam(nearest, lr=1e-4), nearest)  # a 16-bit x rounded to nearest
    assert bool(((nearest[0].detach().double() - fp32).abs() > bound).any())


def _bytes_per_element(opt, params) -> float:
    """The parameter and every optimizer state tensor of its shape (not the step, the last gamma or the two recovery
    weights), per parameter element."""
    held = sum(
        p.numel() * p.element_size()
        + sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.shape == p.shape)
        for p in params
    )
    return held / sum(p.numel() for p in params)


@pytest.mark.parametrize("backend", ALL)
def test_adaptive_state_bytes_checkpoints_and_found_inf(backend):
    """bf16 FusedAdam holds x and fp32 moments, 10 bytes per element as Apex's FusedAdam (14 with
    master_weights=True); ExtrapAdamW past without a master 10 as well (its anchor recovered from the bf16 x; 12
    with store_anchor=True). A state_dict resumes bit-exactly and found_inf changes nothing."""
    kinds = (("fused-adam", 10, 14), ("adam-past", 10, 14), ("fused-lamb", 10, 14))
    for kind, expected, master_expected in kinds:
        params = _params(torch.bfloat16)
        opt = _make_adaptive(kind, params, backend)
        _train_adaptive(kind, opt, params, 3)
        assert _bytes_per_element(opt, params) == expected, kind
        fat = _params(torch.bfloat16)
        with_master = _make_adaptive(kind, fat, backend, master_weights=True)
        _train_adaptive(kind, with_master, fat, 1)
        assert _bytes_per_element(with_master, fat) == master_expected, kind
        make = lambda ps, kind=kind: _make_adaptive(kind, ps, backend)  # noqa: E731
        opt2, resumed = _resumes_and_skips(opt, params, make, _train_adaptive, kind)
        assert opt2.state[resumed[0]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("backend", ALL)
def test_switching_fused_adam_master_weights(backend):
    """master_weights switched on takes the master from x; switched off drops it (x is the iterate, the master's
    rounding); a checkpoint with a master loads into a FusedAdam without one."""
    params = _params(torch.bfloat16)
    opt = ek.FusedAdam(params, lr=1e-2, master_weights=True, backend=backend)
    _train("past", opt, params, 2)
    assert opt.state[params[0]]["anchor"].dtype == torch.float32
    saved = copy.deepcopy(opt.state_dict())
    opt.param_groups[0]["master_weights"] = False
    _train("past", opt, params, 1, start=2)
    assert "anchor" not in opt.state[params[0]]
    opt.param_groups[0]["master_weights"] = True
    _train("past", opt, params, 1, start=3)
    assert torch.equal(opt.state[params[0]]["anchor"].to(torch.bfloat16), params[0].detach())
    lean = ek.FusedAdam(params, lr=1e-2, backend=backend)
    lean.load_state_dict(saved)  # (the checkpoint's group says master_weights=True: it is kept)
    assert lean.param_groups[0]["master_weights"] is True
    with pytest.raises(TypeError, match="master_weights"):
        ek.FusedAdam(params, master_weights="no")
