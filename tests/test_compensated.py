"""The compensated anchor (master_weights="compensated"; Transformer Engine's store_param_remainders=True for the
drop-ins; extrap_kernels/compensation.py): a bf16 parameter holds the 16 low bits of its fp32 value instead of an
fp32 master, and the step runs on the joined fp32 value. So with gamma = 0 the joined value is the fp32 master of
master_weights=True bit for bit, and with extrapolation it is the fp32 parameter's anchor-free trajectory bit for
bit (whose distance from the stored-anchor one tests/test_anchor_free*.py bound). Each comparison runs both sides
on the same backend; the control is the bf16 x alone, which is the master's rounding, not the master."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS
from test_no_master import _resumes_and_skips

import extrap_kernels as ek
from extrap_kernels import compensation
from extrap_kernels.compensation import join, split

BACKENDS = CPU_BACKENDS + ["reference"]  # (every backend: the fused ones join and split x in the kernel)
SIZES = (1, 33, 1000)
STEPS = 12


def _params(dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).bfloat16().to(dtype)) for n in SIZES]


def _train(opt, params, steps=STEPS, start=0):
    """`steps` steps with bf16-representable gradients and a changing lr and gamma (a scheduler's)."""
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).bfloat16().to(p.dtype)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (1 + step % 3)
            if "gamma" in group and group["gamma"] != 0:
                group["gamma"] = 2e-3 * (1 + step % 2)
        opt.step()


def _full(opt, params):
    return [join(p.detach(), opt.state[p][compensation.KEY]) for p in params]


def _bits(tensors):
    return torch.cat([t.reshape(-1).view(torch.int32) for t in tensors])


def test_split_and_join_round_trip_exactly():
    """Every finite fp32 value comes back bit for bit, and an inf as itself; a nan (CUDA's canonical 0x7FFFFFFF, whose
    carry would wrap to -0, among them) stays a nan in x too; the bf16 half is the nearest rounding but at exact
    ties (the low half 0x8000, rounded up here); the control: the bf16 value alone is not the fp32 one."""
    gen = torch.Generator().manual_seed(0)
    scales = 10.0 ** torch.randint(-40, 38, (200000,), generator=gen).double()
    values = (torch.randn(200000, generator=gen, dtype=torch.float64) * scales).float()
    specials = [0.0, -0.0, float("inf"), -float("inf"), 3.3e38, -3.3e38, 1e-40, -1e-40, 1 + 2**-8]
    values = torch.cat([values, torch.tensor(specials)])
    x, remainder = split(values)
    assert x.dtype == torch.bfloat16 and remainder.dtype == torch.int16
    assert torch.equal(join(x, remainder).view(torch.int32), values.view(torch.int32))
    nans = torch.tensor([0x7FFFFFFF, 0x7FC00000, 0x7F808000, -1], dtype=torch.int32).view(torch.float32)
    x_nan, remainder_nan = split(nans)
    assert bool(x_nan.isnan().all()) and bool(join(x_nan, remainder_nan).isnan().all())
    finite = torch.isfinite(values)
    tie = torch.bitwise_and(values.view(torch.int32), 0xFFFF) == 0x8000
    differs = finite & (x.float() != values.bfloat16().float())
    assert bool((differs <= tie).all()) and bool(tie[-1])  # (1 + 2^-8: a tie, rounded up)
    assert int((x.float() != values).sum()) > 0.99 * values.numel()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind", ["fused-adam", "fused-lamb", "fused-sgd", "adamw-gamma0", "sgd-gamma0", "adamw-bf16-moments"]
)
def test_gamma_zero_is_the_fp32_master_bit_for_bit(backend, kind):
    """Without extrapolation x over its remainder is master_weights=True's fp32 master, bit for bit, over steps
    with a changing lr (Transformer Engine's store_param_remainders promise)."""

    def make(params, master):
        options = dict(lr=1e-3, weight_decay=0.01, backend=backend)
        if kind == "fused-adam":
            return ek.FusedAdam(params, master_weights=True, store_param_remainders=master == "compensated", **options)
        if kind == "fused-lamb":
            return ek.FusedLAMB(params, master_weights=True, store_param_remainders=master == "compensated", **options)
        if kind == "fused-sgd":
            return ek.FusedSGD(params, momentum=0.9, master_weights=master, **options)
        if kind == "sgd-gamma0":
            return ek.ExtrapSGD(params, gamma=0.0, momentum=0.9, master_weights=master, **options)
        moments = torch.bfloat16 if kind == "adamw-bf16-moments" else torch.float32
        return ek.ExtrapAdamW(
            params, gamma=0.0, master_weights=master, exp_avg_dtype=moments, exp_avg_sq_dtype=moments, **options
        )

    master, lean = _params(), _params()
    opt_master, opt_lean = make(master, True), make(lean, "compensated")
    _train(opt_master, master)
    _train(opt_lean, lean)
    assert all("anchor" not in opt_lean.state[p] for p in lean)
    masters = [opt_master.state[p]["anchor"] for p in master]
    assert torch.equal(_bits(_full(opt_lean, lean)), _bits(masters))
    # the control: x alone is the master's rounding (but at ties), not the master
    assert not torch.equal(_bits([p.detach().float() for p in lean]), _bits(masters))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "adam", "lamb", "sgd"])
def test_with_extrapolation_it_is_the_fp32_parameter_trajectory(backend, kind):
    """With extrapolation on (the anchor-free past mode, gamma changing) x over its remainder is the trajectory of
    the same optimizer on fp32 parameters, bit for bit; the bf16 parameters without a master (the control) are not."""

    def make(params, **extra):
        options = dict(lr=1e-3, gamma=2e-3, weight_decay=0.01, backend=backend, **extra)
        if kind == "sgd":
            return ek.ExtrapSGD(params, momentum=0.9, **options)
        return {"adamw": ek.ExtrapAdamW, "adam": ek.ExtrapAdam, "lamb": ek.ExtrapLAMB}[kind](params, **options)

    full, lean, rounded = _params(torch.float32), _params(), _params()
    opt_full, opt_lean = make(full), make(lean, master_weights="compensated")
    opt_rounded = make(rounded, master_weights=False)
    for opt, params in ((opt_full, full), (opt_lean, lean), (opt_rounded, rounded)):
        _train(opt, params)
    assert torch.equal(_bits(_full(opt_lean, lean)), _bits([p.detach() for p in full]))
    assert not torch.equal(_bits([p.detach().float() for p in rounded]), _bits([p.detach() for p in full]))


def _bytes_per_element(opt, params) -> float:
    held = sum(
        p.numel() * p.element_size()
        + sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.shape == p.shape)
        for p in params
    )
    return held / sum(p.numel() for p in params)


def test_memory_per_element():
    """Parameter included, per bf16 element: ExtrapAdamW past with the compensated anchor and bf16 moments 8 (x,
    remainder, m, v: Transformer Engine's best figure, here with extrapolation on), 12 with fp32 moments (16 with
    an fp32 master); FusedAdam with store_param_remainders and bf16 moments 8; ExtrapSGD past 8 (x, remainder, m)."""
    bf16 = dict(exp_avg_dtype=torch.bfloat16, exp_avg_sq_dtype=torch.bfloat16)
    for make, expected in (
        (lambda ps: ek.ExtrapAdamW(ps, lr=1e-3, master_weights="compensated", **bf16), 8),
        (lambda ps: ek.ExtrapAdamW(ps, lr=1e-3, master_weights="compensated"), 12),
        (lambda ps: ek.ExtrapAdamW(ps, lr=1e-3, master_weights=True), 14),
        (lambda ps: ek.FusedAdam(ps, lr=1e-3, master_weights=True, store_param_remainders=True, **bf16), 8),
        (lambda ps: ek.ExtrapSGD(ps, lr=1e-2, momentum=0.9, master_weights="compensated"), 8),
    ):
        params = _params()
        opt = make(params)
        _train(opt, params, steps=2)
        assert _bytes_per_element(opt, params) == expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "fused-adam"])
def test_checkpoints_resume_exactly_and_found_inf_changes_nothing(backend, kind):
    def make(params):
        if kind == "fused-adam":
            return ek.FusedAdam(params, lr=1e-3, master_weights=True, store_param_remainders=True, backend=backend)
        return ek.ExtrapAdamW(params, lr=1e-3, gamma=2e-3, master_weights="compensated", backend=backend)

    params = _params()
    opt = make(params)
    _train(opt, params, steps=3)
    opt2, resumed = _resumes_and_skips(opt, params, make, lambda kind, o, ps, n, start: _train(o, ps, n, start), kind)
    for p, q in zip(params, resumed):
        assert torch.equal(opt.state[p][compensation.KEY], opt2.state[q][compensation.KEY])


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_load_across_master_kinds(backend):
    """A master_weights=True checkpoint loaded and switched to the compensated anchor (a checkpoint's groups carry the
    option, as every hyperparameter) is its exact split, and a compensated one switched to master_weights=True its
    exact join: either continues as the other would, bit for bit."""

    def make(params, remainders):
        return ek.FusedAdam(params, lr=1e-3, master_weights=True, store_param_remainders=remainders, backend=backend)

    for saved_with, loaded_with in ((False, True), (True, False)):
        params = _params()
        opt = make(params, saved_with)
        _train(opt, params, steps=3)
        saved = copy.deepcopy((params, opt.state_dict()))
        loaded = [torch.nn.Parameter(p.detach().clone()) for p in saved[0]]
        other = make(loaded, loaded_with)
        other.load_state_dict(saved[1])
        other.param_groups[0]["master_weights"] = "compensated" if loaded_with else True
        _train(opt, params, steps=2, start=3)
        _train(other, loaded, steps=2, start=3)
        fulls = [
            _full(o, ps) if remainders else [o.state[p]["anchor"] for p in ps]
            for o, ps, remainders in ((opt, params, saved_with), (other, loaded, loaded_with))
        ]
        assert torch.equal(_bits(fulls[0]), _bits(fulls[1])), (saved_with, loaded_with)


def test_a_write_to_x_is_its_new_fp32_value():
    """x written between steps (its version counter moved) is the new iterate: its remainder restarts at 0."""
    params = _params()
    opt = ek.ExtrapAdamW(params, lr=1e-3, master_weights="compensated", backend="foreach")
    _train(opt, params, steps=2)
    assert any(bool(opt.state[p][compensation.KEY].ne(0).any()) for p in params)
    with torch.no_grad():
        for p in params:
            p.fill_(5.0)
    _train(opt, params, steps=1, start=2)
    for p in params:
        assert bool(((_full(opt, [p])[0] - 5.0).abs() < 0.05).all())


@pytest.mark.parametrize(
    "bad",
    ["fp16", "local", "noise", "store_anchor", "remainders-without-master", "unknown-kind"],
)
def test_refusals_say_what_to_use_and_write_nothing(bad):
    dtype = torch.float16 if bad == "fp16" else torch.bfloat16
    params = _params(dtype)
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    if bad == "remainders-without-master":
        with pytest.raises(ValueError, match="needs master_weights=True"):
            ek.FusedAdam(params, store_param_remainders=True)
        return
    if bad == "unknown-kind":
        with pytest.raises(TypeError, match="'compensated'"):
            ek.ExtrapAdamW(params, master_weights="half")
        return
    options = dict(mode=bad if bad in ("local", "noise") else "past", store_anchor=bad == "store_anchor")
    opt = ek.ExtrapAdamW(params, lr=0.1, master_weights="compensated", **options)
    words = "needs bf16" if bad == "fp16" else "master_weights=True"
    with pytest.raises(ValueError, match=words):
        opt.extrapolate() if bad == "local" else opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, params)) and not opt.state


def test_auto_steps_a_compensated_bucket_on_the_fused_kernels():
    """backend="auto" steps compensated bf16 parameters on the backend it picks for any other bucket here (the
    extension's cpu kernel where it is built), beside the full-precision ones of the same group."""
    fused = "cpu" if "cpu" in CPU_BACKENDS else "foreach"
    auto_params, fused_params = _params() + _params(torch.float32), _params() + _params(torch.float32)
    auto = ek.ExtrapAdamW(auto_params, lr=1e-3, master_weights="compensated")
    on_fused = ek.ExtrapAdamW(fused_params, lr=1e-3, master_weights="compensated", backend=fused)
    _train(auto, auto_params, steps=3)
    _train(on_fused, fused_params, steps=3)
    bf16 = len(SIZES)
    assert torch.equal(_bits(_full(auto, auto_params[:bf16])), _bits(_full(on_fused, fused_params[:bf16])))
    assert torch.equal(_bits(auto_params[bf16:]), _bits(fused_params[bf16:]))


@pytest.mark.parametrize("backend", [b for b in ("cpu", "cuda") if b in CPU_BACKENDS])
@pytest.mark.parametrize("bad", ["fp16", "phase", "shape"])
def test_the_operators_refuse_remainders_they_cannot_join(backend, bad):
    """The extension's operators take int16 anchors as a bf16 x's remainders for update_ and the anchor-free update
    alone, one per parameter of its shape; anything else is refused before a tensor is written."""
    from extrap_kernels.backends import extension
    from extrap_kernels.bucket import Phase

    dtype = torch.float16 if bad == "fp16" else torch.bfloat16
    x, g = torch.randn(8).to(dtype), torch.randn(8).to(dtype)
    remainder = torch.zeros(7 if bad == "shape" else 8, dtype=torch.int16)
    m, step = torch.zeros(8), torch.zeros((), dtype=torch.float32)
    before = (x.clone(), remainder.clone())
    phase = Phase.UPDATE_PAST if bad == "phase" else Phase.UPDATE
    run = extension.operator(phase, extension.extension(backend, x.device))
    with pytest.raises((ValueError, TypeError), match="remainder"):
        run([x], [g], [remainder], [m], [step], [0], [], lr=0.1, momentum=0.9)
    assert torch.equal(x, before[0]) and torch.equal(remainder, before[1]) and float(step) == 0
