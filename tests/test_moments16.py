"""16-bit moments of the Adam family (SPEC "16-bit optimizer state, adaptive bases"): exp_avg_dtype and
exp_avg_sq_dtype (Transformer Engine's names) store m, v and v_max in bf16 or fp16, each computed in fp32 and
rounded stochastically with Philox bits under a key of their own, before the direction reads them.

Every backend draws the same bits (keyed by the update's count, the parameter's index and the element), so a
backend equals the reference but where its own fp32 rounding of a moment moved it across the random threshold
(about 2^-16 per stored value). The rounding is held to what it promises: the mean of many seeded runs is the
fp32 trajectory of the moments, where rounding to nearest loses the updates; and to what the options promise:
memory, checkpoints both ways, found_inf, the anchor-free past mode, and clear refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import CPU_BACKENDS, examples_for
from hypothesis import given, settings
from hypothesis import strategies as st
from test_no_master import _resumes_and_skips

import extrap_kernels as ek
from extrap_kernels import rounding

ALL = CPU_BACKENDS + ["reference"]
SIXTEEN = [torch.bfloat16, torch.float16]
SIZES = (1, 33, 1000)
KINDS = ["adam-past", "adamw-past", "adamw-past-stored", "adamw-amsgrad", "adamw-local", "adamw-noise"]
KINDS += ["lamb-past", "lamb-local", "fused-adam", "fused-lamb"]
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _params(dtype=torch.float32, seed=0, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def _make(kind, params, backend, moments=torch.bfloat16, **extra):
    options = dict(lr=1e-2, weight_decay=1e-2, exp_avg_dtype=moments, exp_avg_sq_dtype=moments, backend=backend)
    options.update(extra)
    if kind == "fused-adam":
        return ek.FusedAdam(params, **options)
    if kind == "fused-lamb":
        return ek.FusedLAMB(params, **options)
    base, mode, *variant = kind.split("-")
    cls = {"adam": ek.ExtrapAdam, "adamw": ek.ExtrapAdamW, "lamb": ek.ExtrapLAMB}[base]
    if mode == "amsgrad":
        mode, options["amsgrad"] = "past", True
    if variant == ["stored"]:
        options["store_anchor"] = True
    options.setdefault("seed", 11)
    return cls(params, mode=mode, gamma=0.02, **options)


def _train(kind, opt, params, steps, start=0):
    for step in range(start, start + steps):
        _grads(params, step)
        if kind.endswith("local"):
            opt.extrapolate()
            _grads(params, 1000 + step)
        opt.step()


def _assert_mostly_equal(a, b, rtol: float, total: int, name: str, atol: float = 0.0) -> None:
    """Two runs of one kind, one backend's and the reference's: equal to `rtol` (a few roundings of the state's
    arithmetic per step; `atol` besides) but in the few elements where a moment crossed its random threshold in one
    run and not the other (~2^-16 per stored value and step: allow a few per thousand of the `total` elements)."""
    apart = (a.double() - b.double()).abs() > rtol * b.double().abs().clamp_min(1e-3) + atol
    assert int(apart.sum()) <= max(3, total // 300), f"{name}: {int(apart.sum())} of {a.numel()} differ"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("moments", SIXTEEN, ids=str)
def test_every_backend_rounds_the_moments_as_the_reference(backend, kind, moments):
    """The moments are stored in their 16-bit type and equal the reference's but for a few threshold crossings;
    x and the anchor too (computed from them, in fp32: 64 roundings over the 8 steps)."""
    ours, oracle = _params(), _params()
    opt, ref = _make(kind, ours, backend, moments), _make(kind, oracle, "reference", moments)
    steps = 8
    _train(kind, opt, ours, steps)
    _train(kind, ref, oracle, steps)
    total = sum(p.numel() for p in ours)
    rtol = 64 * steps * torch.finfo(torch.float32).eps
    for p, q in zip(ours, oracle):
        kept = [k for k in MOMENTS if k in opt.state[p]]
        assert kept == [k for k in MOMENTS if k in ref.state[q]] and len(kept) == 2 + kind.endswith("amsgrad")
        for key in kept:
            assert opt.state[p][key].dtype == moments == ref.state[q][key].dtype, key
            _assert_mostly_equal(opt.state[p][key], ref.state[q][key], 2 * torch.finfo(moments).eps, total, key)
        _assert_mostly_equal(p.detach(), q.detach(), rtol, total, "x")
        if "anchor" in opt.state[p]:
            _assert_mostly_equal(opt.state[p]["anchor"], ref.state[q]["anchor"], rtol, total, "anchor")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_shapes_and_options(backend):
    """As above over random shapes (0, 1, odd, past a block and a chunk), kinds, 16-bit types, learning rates,
    betas and seeds, 3 steps each (a tenth of the profile's examples: each runs the reference, one tensor at a
    time, over up to 200k elements)."""

    @settings(max_examples=max(10, examples_for(backend) // 10))
    @given(
        kind=st.sampled_from(KINDS),
        moments=st.sampled_from(SIXTEEN),
        sizes=st.lists(st.sampled_from([0, 1, 3, 17, 1000, 4097, 65539]), min_size=1, max_size=3),
        lr=st.floats(1e-4, 0.05),
        beta2=st.sampled_from([0.9, 0.99, 0.999]),
        seed=st.integers(0, 2**63 - 1),
    )
    def check(kind, moments, sizes, lr, beta2, seed):
        ours, oracle = _params(sizes=sizes), _params(sizes=sizes)
        extra = dict(lr=lr, betas=(0.9, beta2), **({} if kind.startswith("fused") else dict(seed=seed)))
        opt, ref = _make(kind, ours, backend, moments, **extra), _make(kind, oracle, "reference", moments, **extra)
        if kind.startswith("fused"):  # (Apex's classes key the rounding by the group's seed)
            opt.param_groups[0]["seed"] = ref.param_groups[0]["seed"] = seed
        _train(kind, opt, ours, 3)
        _train(kind, ref, oracle, 3)
        total = max(sum(sizes), 1)
        for p, q in zip(ours, oracle):
            for key in [k for k in MOMENTS if k in ref.state[q]]:
                assert opt.state[p][key].dtype == moments
                _assert_mostly_equal(opt.state[p][key], ref.state[q][key], 2 * torch.finfo(moments).eps, total, key)
            # LAMB's trust ratio: two fp32 sums of numel squares, each within numel * eps relative, scale
            # e = trust * u, |e_i| <= ||s||, and move x by (lr + gamma) * e per step
            eps = torch.finfo(torch.float32).eps
            atol = 3 * (lr + 0.02) * float(q.detach().norm()) * q.numel() * eps if "lamb" in kind else 0.0
            _assert_mostly_equal(p.detach(), q.detach(), 192 * eps, total, "x", atol)

    check()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["adamw-past", "fused-adam", "lamb-local"])
def test_with_16_bit_parameters_without_a_master(backend, kind):
    """bf16 x without a master and bf16 moments: x (and the anchor) rounded under the parameter's key, the moments
    under theirs; every stored value as the reference's but for a few threshold crossings."""
    ours, oracle = _params(torch.bfloat16), _params(torch.bfloat16)
    opt = _make(kind, ours, backend, master_weights=False)
    ref = _make(kind, oracle, "reference", master_weights=False)
    _train(kind, opt, ours, 6)
    _train(kind, ref, oracle, 6)
    total = sum(p.numel() for p in ours)
    for p, q in zip(ours, oracle):
        for key in ("exp_avg", "exp_avg_sq", "anchor"):
            if key in opt.state[p]:
                assert opt.state[p][key].dtype == torch.bfloat16
                _assert_mostly_equal(opt.state[p][key], ref.state[q][key], 1e-2, total, key)
        _assert_mostly_equal(p.detach(), q.detach(), 1e-2, total, "x")


# ---- unbiased: the mean of many seeded runs is the fp32 trajectory ------------------------------------------------
BETAS = (0.99, 0.999)
RUNS, ELEMENTS, STEPS = 4, 16384, 32


def _moment_means(backend, dtype, rounding_to_nearest=False):
    """The mean over RUNS seeded runs of ELEMENTS alike elements (each element's rounding bits are its own: RUNS *
    ELEMENTS independent samples) of m and v after STEPS updates, with the float64 trajectory they must follow.
    Adam without weight decay: the moments do not depend on x. They start (as a loaded state) at m0 = 1 and
    v0 = 1 + 8 eps, and every gradient is g = 1 + 8 eps: each update moves m by 0.01 * 8 eps and v by 0.001 * 8 eps
    relative, below half the 16-bit spacing, so rounding to nearest (the control, `rounding_to_nearest`: the same
    recursion stored in the 16-bit type to nearest) keeps them where they started."""
    eps = torch.finfo(dtype).eps
    g = 1.0 + 8 * eps
    m_exact, v_exact = 1.0, 1.0 + 8 * eps
    for _ in range(STEPS):
        m_exact = BETAS[0] * m_exact + (1 - BETAS[0]) * g
        v_exact = BETAS[1] * v_exact + (1 - BETAS[1]) * g * g
    means = torch.zeros(2, dtype=torch.float64)
    for seed in range(RUNS):
        params = [torch.nn.Parameter(torch.zeros(ELEMENTS))]
        opt = ek.ExtrapAdam(params, lr=1e-3, betas=BETAS, gamma=0.0, seed=seed, backend=backend)
        opt.param_groups[0]["exp_avg_dtype"] = opt.param_groups[0]["exp_avg_sq_dtype"] = dtype
        params[0].grad = torch.full((ELEMENTS,), g)
        opt.step()  # (creates the state; then set as if loaded)
        state = opt.state[params[0]]
        state["exp_avg"].fill_(1.0)
        state["exp_avg_sq"].fill_(1.0 + 8 * eps)
        m, v = state["exp_avg"].float(), state["exp_avg_sq"].float()
        for _ in range(STEPS):
            if rounding_to_nearest:
                m = (BETAS[0] * m + (1 - BETAS[0]) * g).to(dtype).float()
                v = (BETAS[1] * v + (1 - BETAS[1]) * g * g).to(dtype).float()
            else:
                params[0].grad = torch.full((ELEMENTS,), g)
                opt.step()
        if not rounding_to_nearest:
            assert state["exp_avg"].dtype == dtype
            m, v = state["exp_avg"], state["exp_avg_sq"]
        means += torch.stack([m.double().mean(), v.double().mean()]) / RUNS
    return means, torch.tensor([m_exact, v_exact], dtype=torch.float64)


def _bound(dtype, exact):
    """Each update's rounding adds variance <= ulp^2 / 4 to a moment (then damped by beta^2 < 1), so after STEPS
    updates a sample's variance is <= STEPS * ulp^2 / 4 and the mean of RUNS * ELEMENTS independent samples has
    standard deviation <= ulp * sqrt(STEPS / (RUNS * ELEMENTS)) / 2; 6 of them bound it (a false failure ~2e-9 per
    moment). The fp32 arithmetic's own error, a few roundings of 2^-24 per step, is far below (~1e-3 of it)."""
    ulp = torch.finfo(dtype).eps * torch.ones_like(exact)  # (the spacing in [1, 2), where the values stay)
    return 6 * ulp * math.sqrt(STEPS / (RUNS * ELEMENTS)) / 2


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_the_mean_of_rounded_moments_is_the_fp32_trajectory(backend, dtype):
    means, exact = _moment_means(backend, dtype)
    bound = _bound(dtype, exact)
    assert bool(((means - exact).abs() <= bound).all()), ((means - exact) / bound).tolist()


@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_rounding_to_nearest_fails_the_same_bound(dtype):
    """The control: the moments stored to nearest lose every update and end 2.2 (m) and 0.25 (v) spacings from
    the trajectory, outside the bound the stochastic rounding keeps (0.066 spacings)."""
    means, exact = _moment_means("reference", dtype, rounding_to_nearest=True)
    assert bool(((means - exact).abs() > _bound(dtype, exact)).all()), (means - exact) / _bound(dtype, exact)


def test_the_moment_bits_are_their_own():
    """The moments' rounding bits are neither the noise's nor the parameter rounding's, for the same counter."""
    element = torch.arange(1000)
    step, index = torch.tensor(3), torch.tensor(1)
    noise = rounding.philox.noise_bits(11, step, index, element)
    params = rounding.philox.noise_bits(11 ^ rounding.ROUNDING_KEY, step, index, element)
    moments = rounding.philox.noise_bits(11 ^ rounding.MOMENT_KEY, step, index, element)
    for other in (noise, params):
        assert not bool((moments[0] == other[0]).any()) and not bool((moments[1] == other[1]).any())


@pytest.mark.parametrize("backend", ALL)
def test_deterministic_and_independent_of_the_launch_layout(backend):
    """The same seed gives the same moments, bit for bit, whether the parameters share a bucket or not; another
    seed gives other ones."""
    together, apart, other = _params(), _params(), _params()
    opts = [
        _make("adamw-past", together, backend),
        ek.ExtrapAdamW(
            [{"params": [p]} for p in apart],
            lr=1e-2,
            gamma=0.02,
            seed=11,
            exp_avg_dtype=torch.bfloat16,
            exp_avg_sq_dtype=torch.bfloat16,
            backend=backend,
        ),
        _make("adamw-past", other, backend, seed=12),
    ]
    for opt, params in zip(opts, (together, apart, other)):
        _train("past", opt, params, 3)
    for p, q, r in zip(together, apart, other):
        assert torch.equal(p, q) and torch.equal(opts[0].state[p]["exp_avg"], opts[1].state[q]["exp_avg"])
    assert not torch.equal(opts[0].state[together[2]]["exp_avg"], opts[2].state[other[2]]["exp_avg"])


# ---- memory, checkpoints, found_inf, anchor-free ------------------------------------------------------------------
def _bytes_per_element(opt, params) -> float:
    """The parameter and every optimizer state tensor of its shape (not the step or the two recovery weights), per
    parameter element."""
    held = sum(
        p.numel() * p.element_size()
        + sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.shape == p.shape)
        for p in params
    )
    return held / sum(p.numel() for p in params)


@pytest.mark.parametrize("backend", ALL)
def test_memory_per_element(backend):
    """Parameter included: fp32 ExtrapAdamW past (anchor-free) with bf16 moments 8 bytes (torch's fused AdamW
    12); bf16 FusedAdam without a master 6 (Apex 10); bf16 ExtrapAdamW past without a master, its anchor recovered
    from the bf16 x, 6 (torch's fused AdamW's figure, with extrapolation on); 8 with store_anchor=True."""
    for kind, dtype, extra, expected in (
        ("adamw-past", torch.float32, {}, 8),
        ("fused-adam", torch.bfloat16, {}, 6),
        ("adamw-past", torch.bfloat16, dict(master_weights=False), 6),
        ("adamw-past", torch.bfloat16, dict(master_weights=False, store_anchor=True), 8),
    ):
        params = _params(dtype)
        opt = _make(kind, params, backend, **extra)
        _train(kind, opt, params, 2)
        assert _bytes_per_element(opt, params) == expected, kind


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["adamw-past", "fused-lamb"])
def test_checkpoints_resume_exactly_and_found_inf_changes_nothing(backend, kind):
    params = _params()
    opt = _make(kind, params, backend)
    _train(kind, opt, params, 3)
    opt2, resumed = _resumes_and_skips(opt, params, lambda ps: _make(kind, ps, backend), _train, kind)
    assert opt2.state[resumed[0]]["exp_avg"].dtype == torch.bfloat16
    for p, q in zip(params, resumed):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])


@pytest.mark.parametrize("backend", ALL)
def test_checkpoints_load_across_moment_dtypes(backend):
    """A checkpoint's groups carry the option, as every hyperparameter: an fp32-moment checkpoint loads as it was
    (exactly), and the group's option switched afterwards converts the moments (to nearest, once); a bf16-moment
    checkpoint loads into an optimizer built with fp32 moments as bf16, exactly."""
    params = _params()
    full = _make("adamw-past", params, backend, moments=torch.float32)
    _train("past", full, params, 3)
    lean_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    lean = _make("adamw-past", lean_params, backend)
    lean.load_state_dict(copy.deepcopy(full.state_dict()))
    for p, q in zip(params, lean_params):
        assert torch.equal(lean.state[q]["exp_avg"], full.state[p]["exp_avg"])
    lean.param_groups[0]["exp_avg_dtype"] = lean.param_groups[0]["exp_avg_sq_dtype"] = torch.bfloat16
    _train("past", lean, lean_params, 1, start=3)
    assert {lean.state[p][k].dtype for p in lean_params for k in ("exp_avg", "exp_avg_sq")} == {torch.bfloat16}
    back_params = [torch.nn.Parameter(p.detach().clone()) for p in lean_params]
    back = _make("adamw-past", back_params, backend, moments=torch.float32)
    back.load_state_dict(copy.deepcopy(lean.state_dict()))
    for p, q in zip(lean_params, back_params):
        assert back.state[q]["exp_avg_sq"].dtype == torch.bfloat16
        assert torch.equal(back.state[q]["exp_avg_sq"], lean.state[p]["exp_avg_sq"])
    _train("past", back, back_params, 1, start=4)
    _train("past", lean, lean_params, 1, start=4)
    assert all(torch.equal(p, q) for p, q in zip(lean_params, back_params))
    lean.param_groups[0]["exp_avg_dtype"] = lean.param_groups[0]["exp_avg_sq_dtype"] = torch.float16
    _train("past", lean, lean_params, 1, start=5)
    assert {lean.state[p]["exp_avg_sq"].dtype for p in lean_params} == {torch.float16}


def test_the_options_are_refused_clearly():
    params = _params()
    with pytest.raises(ValueError, match="must be the same"):
        ek.ExtrapAdamW(params, exp_avg_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="exp_avg_sq_dtype"):
        ek.FusedAdam(params, exp_avg_dtype=torch.float32, exp_avg_sq_dtype=torch.float64)
    with pytest.raises(TypeError, match="exp_avg_dtype"):
        ek.FusedLAMB(params, exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16")
    wide = [torch.nn.Parameter(torch.randn(4, dtype=torch.float64))]
    opt = ek.ExtrapAdamW(wide, exp_avg_dtype=torch.bfloat16, exp_avg_sq_dtype=torch.bfloat16, backend="reference")
    wide[0].grad = torch.randn(4, dtype=torch.float64)
    before = wide[0].detach().clone()
    with pytest.raises(RuntimeError, match="16-bit moments .* need fp32, bf16 or fp16 parameters"):
        opt.step()
    assert torch.equal(wide[0], before)
    opt = _make("adamw-past", params, "reference")
    opt.param_groups[0]["exp_avg_sq_dtype"] = torch.float32  # (a group edited by hand is checked at the step)
    _grads(params, 0)
    with pytest.raises(ValueError, match="must be the same"):
        opt.step()
