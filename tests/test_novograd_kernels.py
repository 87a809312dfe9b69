"""NovoGrad's kernels (cpu, the CUDA launcher's host emulation, Triton; foreach too) against the float64
reference (reference_novograd.py), one phase at a time, on random inputs: sizes 0, 1, odd, above and not a
multiple of the block, every dtype, every option, AMP's grad_scale and found_inf, with and without a master.
The tolerance is derived from the dtype: the rounding count of the adaptive step (test_adaptive_kernels's
ROUNDINGS) times eps, plus the running norm's, a sum of numel terms, each within numel * eps relative; a
control shows the bound catches a bias correction one step off."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CPU_BACKENDS, DTYPES, assert_within, misaligned_copy, noise_tolerance, output_ulp, state_eps
from hypothesis import given
from hypothesis import strategies as st
from test_adaptive_kernels import PHASES, ROUNDINGS, SIZES

import extrap_kernels as ek
from extrap_kernels import reference_novograd
from extrap_kernels.bucket import Bucket, Phase, state_dtype
from extrap_kernels.hyper import NovoGradHyper
from extrap_kernels.novograd_math import blend, grad_norm


@st.composite
def novograd_options(draw):
    return dict(
        lr=draw(st.floats(1e-4, 0.1)),
        gamma=draw(st.floats(0.0, 0.3)),
        betas=(draw(st.sampled_from([0.0, 0.5, 0.95])), draw(st.sampled_from([0.0, 0.25, 0.98]))),
        eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-3, 0.1])),
        reg_inside_moment=draw(st.booleans()),
        grad_averaging=draw(st.booleans()),
        norm_type=draw(st.sampled_from([2, 0])),
        init_zero=draw(st.booleans()),
        bias_correction=draw(st.booleans()),
        maximize=draw(st.booleans()),
        noise_std=draw(st.sampled_from([1e-3, 0.05])),
        seed=draw(st.integers(0, 2**63 - 1)),
    )


def inputs(opts, dtype, sizes, step, grad_scale, misaligned, data_seed, master):
    """x, g, s, m and each tensor's running norm as an optimizer holds them after `step` updates (before the
    first: 0 with init_zero, else unset, -1)."""
    gen = torch.Generator().manual_seed(data_seed)
    sdtype = state_dtype(dtype)
    x = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    g = [(torch.randn(n, generator=gen) * (grad_scale or 1.0)).to(dtype) for n in sizes]
    s = [
        (t.to(sdtype) + 0.01 * torch.randn(t.shape, generator=gen, dtype=sdtype)).to(sdtype if master else dtype)
        for t in x
    ]
    m = [0.1 * torch.randn(n, generator=gen, dtype=sdtype) for n in sizes]
    unset = 0.0 if opts["init_zero"] else -1.0
    norms = [
        torch.tensor(unset if step == 0 else (0.5 + float(torch.rand((), generator=gen))) * math.sqrt(n), dtype=sdtype)
        for n in sizes
    ]
    if misaligned:  # the last tensor one element into its storage: the kernels' scalar path
        x[-1], g[-1], s[-1], m[-1] = map(misaligned_copy, (x[-1], g[-1], s[-1], m[-1]))
    return x, g, s, m, norms


def novograd_bucket(x, g, s, m, norms, step, master):
    copies = lambda ts: [misaligned_copy(t) if t.storage_offset() else t.clone() for t in ts]  # noqa: E731
    return Bucket(
        params=copies(x),
        grads=copies(g),
        anchors=copies(s),
        momenta=copies(m),
        steps=[torch.tensor(float(step)) for _ in x],
        indices=list(range(len(x))),
        grad_norms=copies(norms),
        master=master,
    )


def run_case(
    backend, phase, opts, dtype, sizes, step, grad_scale, found_inf, misaligned, data_seed, master, oracle_step=None
):
    """One launch of `backend` and of the float64 reference on the same inputs (`oracle_step`: the reference
    given another step count, for the control); raises AssertionError where they differ by more than the bound."""
    state = inputs(opts, dtype, sizes, step, grad_scale, misaligned, data_seed, master)
    h = NovoGradHyper.from_group(opts)
    scale = None if grad_scale is None else torch.tensor([grad_scale])
    skip = None if found_inf is None else torch.tensor([float(found_inf)])
    ours = novograd_bucket(*state, step, master)
    oracle = novograd_bucket(*state, step if oracle_step is None else oracle_step, master)
    ek.backends.resolve(backend, torch.device("cpu")).apply(phase, ours, h, scale, skip)
    reference_novograd.apply(phase, oracle, h, scale, skip, compute_dtype=torch.float64)
    eps, given_ = state_eps(dtype), novograd_bucket(*state, step, master)
    inv_scale = (-1.0 if h.maximize else 1.0) / (grad_scale or 1.0)
    for i, anchor in enumerate(given_.anchor_values(phase)):
        if anchor.numel() == 0:
            continue
        s, m_in, gp = anchor.double(), given_.momenta[i].double(), given_.grads[i].double() * inv_scale
        norm = blend(grad_norm(gp, h), given_.grad_norms[i].double(), h)
        m, e = reference_novograd.direction(s, m_in, gp, norm, step + 1, h)
        summed = anchor.numel() * eps  # (the norm's relative error: e and, reg_inside_moment, m are over it)
        moved = (h.lr + h.gamma) * float(e.abs().max())
        tol = ROUNDINGS * eps * (float(s.abs().max()) + moved) + moved * summed
        x_tol = tol + (noise_tolerance(h.noise_std) if phase == Phase.UPDATE_NOISE else 0.0)
        assert_within(ours.params[i], oracle.params[i], x_tol + output_ulp(dtype, oracle.params[i]), f"x {i}")
        s_tol = tol + (0.0 if master else output_ulp(dtype, oracle.anchors[i]))  # (16 bits: rounded as x)
        assert_within(ours.anchors[i], oracle.anchors[i], s_tol, f"s {i}")
        added = float((m - h.betas[0] * m_in).abs().max())  # (what entered m: g' or, mode 0, g' / d + wd * s)
        m_tol = ROUNDINGS * eps * (float(m_in.abs().max()) + added) + (added * summed if h.reg_inside_moment else 0)
        assert_within(ours.momenta[i], oracle.momenta[i], m_tol, f"m {i}")
        assert_within(ours.grad_norms[i], oracle.grad_norms[i], (ROUNDINGS * eps + summed) * float(norm), f"norm {i}")
    assert [float(t) for t in ours.steps] == [float(t) for t in oracle.steps]
    if grad_scale is not None and not found_inf:  # AMP's gradients left unscaled (a power of 2)
        for i, (written, sent) in enumerate(zip(ours.grads, state[1])):
            assert torch.equal(written, (sent.double() / grad_scale).to(dtype)), f"g {i}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(
    phase=st.sampled_from(PHASES),
    opts=novograd_options(),
    dtype=st.sampled_from(DTYPES),
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=4),
    step=st.sampled_from([0, 1, 6]),
    amp=st.sampled_from([None, 0, 1]),  # no AMP; its grad_scale with found_inf clear or set
    misaligned=st.booleans(),
    data_seed=st.integers(0, 2**31 - 1),
    master=st.booleans(),
)
def test_one_phase_against_float64_reference(
    backend, phase, opts, dtype, sizes, step, amp, misaligned, data_seed, master
):
    grad_scale = None if amp is None else 1024.0
    run_case(backend, phase, opts, dtype, sizes, step, grad_scale, amp, misaligned, data_seed, master)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tolerance_catches_a_bias_correction_one_step_off(backend, dtype):
    """The bound is tight enough to fail: against an oracle one step further (the corrections of step 8 where
    the kernel used 7: 1 - 0.9^t and sqrt(1 - 0.98^t) e off by 2%), the same comparison raises on x or s."""
    opts = dict(
        lr=0.01,
        gamma=0.05,
        betas=(0.9, 0.98),
        eps=1e-8,
        weight_decay=0.01,
        reg_inside_moment=False,
        grad_averaging=True,
        norm_type=2,
        init_zero=False,
        bias_correction=True,
        maximize=False,
        noise_std=0.01,
        seed=0,
    )
    case = (backend, Phase.UPDATE_PAST, opts, dtype, [1000, 17], 6, None, None, False, 1, True)
    run_case(*case)
    with pytest.raises(AssertionError, match=r"^[xs] \d: "):
        run_case(*case, oracle_step=7)
