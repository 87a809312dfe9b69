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
    ulp = torch.finfo(dtype).eps
    total = sum(p.numel() for p in ours)
    for p, q in zip(ours, oracle):
        for a, b in [(p.detach(), q.detach())] + [
            (opt.state[p][k], ref.state[q][k]) for k in ("anchor", "momentum_buffer") if k in opt.state[p]
        ]:
            assert a.dtype == dtype == b.dtype
            apart = (a.float() - b.float()).abs()
            # a value the two computed one fp32 rounding apart lands on the other neighbour only if the random
            # threshold falls between them (~2^-16 per stored value); the difference it leaves then grows
            # with the steps it is carried for: allow a few per thousand, each a few ulps of the value
            assert int((apart > 0).sum()) <= max(3, total // 300), f"{int((apart > 0).sum())} of {a.numel()} differ"
            assert bool((apart <= 4 * steps * ulp * b.float().abs().clamp_min(1.0)).all())


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
def test_state_bytes_and_checkpoints(backend):
    """bf16 without a master holds 6 bytes per parameter element (x, s, m) instead of 10; its state_dict
    resumes bit-exactly; found_inf changes nothing."""
    params = _params(torch.bfloat16)
    opt = _make("past", params, backend)
    _train("past", opt, params, 3)
    held = sum(
        p.numel() * p.element_size() + sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.dim() > 0)
        for p in params
    )
    assert held == 6 * sum(SIZES)
    saved = copy.deepcopy((params, opt.state_dict()))
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in saved[0]]
    opt2 = _make("past", resumed, backend)
    opt2.load_state_dict(saved[1])
    assert opt2.state[resumed[0]]["anchor"].dtype == torch.bfloat16
    _train("past", opt, params, 2, start=3)
    _train("past", opt2, resumed, 2, start=3)
    assert all(torch.equal(p, q) for p, q in zip(params, resumed))
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])
    _grads(params, 9)
    opt.step(found_inf=torch.tensor([1.0]))
    assert all(torch.equal(a, p) for a, p in zip(before[0], params))
    for key, state in opt.state_dict()["state"].items():
        assert all(torch.equal(v, before[1][key][k]) for k, v in state.items())


@pytest.mark.parametrize("backend", ALL)
def test_switching_master_weights_converts_the_state(backend):
    params = _params(torch.bfloat16)
    opt = ek.ExtrapSGD(params, backend=backend, **OPTIONS)
    _train("past", opt, params, 2)
    opt.param_groups[0]["master_weights"] = False
    _train("past", opt, params, 1, start=2)
    assert {t.dtype for p in params for k, t in opt.state[p].items() if k != "step"} == {torch.bfloat16}
    opt.param_groups[0]["master_weights"] = True
    _train("past", opt, params, 1, start=3)
    assert {t.dtype for p in params for k, t in opt.state[p].items() if k != "step"} == {torch.float32}
    with pytest.raises(TypeError, match="master_weights"):
        ek.ExtrapSGD(params, lr=0.1, master_weights="no")
