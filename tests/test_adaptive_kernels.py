"""The adaptive bases' kernels (Adam, AdamW, LAMB, Adagrad: every backend with an adaptive kernel that runs here,
the CUDA one in its host emulation) against the reference evaluated in float64, one launch on identical
inputs: random phases, options, dtypes, shapes (0, 1, odd, past a chunk), step counts, AMP scales, LAMB
clipping, misaligned tensors, and 16-bit anchors without a master (stochastically rounded with the same bits
as the reference: one 16-bit ulp apart at most where the two computations straddle a threshold). The
tolerance is derived from the state dtype and the magnitudes the step involves, and a control shows that it
is tight enough to catch a bias correction one step off."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from conftest import CPU_BACKENDS, DTYPES, assert_within, misaligned_copy, noise_tolerance, output_ulp, state_eps
from hypothesis import given
from hypothesis import strategies as st

import extrap_kernels as ek
from extrap_kernels import reference_adaptive
from extrap_kernels.bucket import Bucket, Phase, state_dtype
from extrap_kernels.hyper import HYPERS, AdamHyper, Hyper, LambHyper

PHASES = [Phase.EXTRAPOLATE, Phase.UPDATE, Phase.UPDATE_PAST, Phase.UPDATE_NOISE]
SIZES = [0, 1, 3, 17, 255, 1000, 4097, 65536 + 3]
# roundings per element of one adaptive step in the state precision (g', the two moments, the bias
# corrections, sqrt, the quotient, the decay, lr * e, s -, gamma * e, x -), with margin
ROUNDINGS = 24


@st.composite
def adaptive_options(draw):
    base = draw(st.sampled_from(["adam", "lamb", "adagrad"]))
    adagrad = base == "adagrad"  # (its betas (0, 1) and no bias correction are what Adagrad is)
    return dict(
        base=base,
        lr=draw(st.floats(1e-4, 0.1)),
        gamma=draw(st.floats(0.0, 0.3)),
        betas=(0.0, 1.0)
        if adagrad
        else (draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.99, 0.999]))),
        eps=draw(st.sampled_from([1e-10, 1e-8, 1e-6, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.1])),
        decoupled=draw(st.booleans()),
        amsgrad=base == "adam" and draw(st.booleans()),
        bias_correction=not adagrad and draw(st.booleans()),
        lr_decay=draw(st.sampled_from([0.0, 0.01, 0.5])) if adagrad else 0.0,
        grad_averaging=base == "adam" or draw(st.booleans()),
        max_grad_norm=draw(st.sampled_from([0.0, 0.5, 1e3])) if base == "lamb" else 0.0,
        use_nvlamb=base == "lamb" and draw(st.booleans()),
        maximize=draw(st.booleans()),
        noise_std=draw(st.sampled_from([1e-3, 0.05])),
        seed=draw(st.integers(0, 2**63 - 1)),
    )


def adaptive_bucket(phase, x, g, s, m, v, v_max, step, grad_scale, master=True):
    """A bucket as the optimizers build it (every tensor has an anchor), with LAMB's global gradient norm."""
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in g)) if g else torch.tensor(0.0, dtype=torch.float64)
    return Bucket(
        params=x,
        grads=g,
        anchors=s,
        momenta=m,
        steps=[torch.tensor(float(step)) for _ in x],
        indices=list(range(len(x))),
        second_moments=v,
        max_second_moments=v_max,
        global_grad_norm=norm,
        master=master,
    )


def directions(phase, b: Bucket, h: Hyper, grad_scale):
    """The float64 direction e of each tensor for this launch (the reference's functions), the anchor it
    starts from and the gradient g' that enters the moments: the magnitudes the tolerance is built from."""
    inv_scale = 1.0 / grad_scale if grad_scale else 1.0
    clip = reference_adaptive.clip_factor(b, h, inv_scale)
    out = []
    for i, anchor in enumerate(b.anchor_values(phase)):
        s = anchor.double()
        gp = reference_adaptive.regularized_grad(b.grads[i].double(), s, h, inv_scale, clip)
        v_max = b.max_second_moments[i].double() if b.max_second_moments else None
        m = b.momenta[i].double() if b.momenta else None  # (none: Adagrad's)
        m, v, v_max = reference_adaptive.moments(m, b.second_moments[i].double(), v_max, gp, h)
        out.append((s, reference_adaptive.direction(s, m, v, v_max, int(b.steps[i]) + 1, h), gp))
    return out


def run_case(
    backend, phase, opts, dtype, sizes, step, grad_scale, misaligned, data_seed, oracle_step=None, master=True
):
    """One launch of `backend` and of the float64 reference on the same inputs (`oracle_step`: the reference
    given another step count, for the control; `master` False: a 16-bit x keeps a 16-bit anchor); raises
    AssertionError where they differ by more than the tolerance."""
    gen = torch.Generator().manual_seed(data_seed)
    sdtype = state_dtype(dtype)
    adtype = sdtype if master else dtype  # the anchor's
    x = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    g = [(torch.randn(n, generator=gen) * (grad_scale or 1.0)).to(dtype) for n in sizes]
    s = [(t.to(sdtype) + 0.01 * torch.randn(t.shape, generator=gen, dtype=sdtype)).to(adtype) for t in x]
    m = [0.1 * torch.randn(n, generator=gen, dtype=sdtype) for n in sizes] if opts["base"] != "adagrad" else []
    v = [0.01 * torch.rand(n, generator=gen, dtype=sdtype) for n in sizes]
    v_max = [t + 0.01 * torch.rand(t.shape, generator=gen, dtype=sdtype) for t in v] if opts["amsgrad"] else []
    if misaligned:  # the last tensor one element into its storage: the kernels' scalar path
        x[-1], g[-1], s[-1], v[-1] = map(misaligned_copy, (x[-1], g[-1], s[-1], v[-1]))
        m[-1:] = map(misaligned_copy, m[-1:])
    hyper = HYPERS[opts["base"]].from_group(opts)  # (the options of its base)
    scale = None if grad_scale is None else torch.tensor([grad_scale])

    def copies(tensors):  # (of the same alignment: a misaligned tensor stays misaligned)
        return [misaligned_copy(t) if t.storage_offset() else t.clone() for t in tensors]

    def bucket(count=step):  # (each its own gradients: an AMP phase writes them back unscaled)
        return adaptive_bucket(
            phase, copies(x), copies(g), copies(s), copies(m), copies(v), copies(v_max), count, grad_scale, master
        )

    ours, oracle = bucket(), bucket(step if oracle_step is None else oracle_step)
    ek.backends.resolve(backend, torch.device("cpu")).apply(phase, ours, hyper, scale, None)
    reference_adaptive.apply(phase, oracle, hyper, scale, compute_dtype=torch.float64)
    eps = state_eps(dtype)
    inputs = bucket()
    for i, (anchor, e, gp) in enumerate(directions(phase, inputs, hyper, grad_scale)):
        if anchor.numel() == 0:
            continue
        moved = (hyper.lr + hyper.gamma) * float(e.abs().max())
        tol = ROUNDINGS * eps * (float(anchor.abs().max()) + moved)
        if hyper.base == "lamb":  # the trust ratio: two sums of numel squares, each within numel * eps
            tol += moved * anchor.numel() * eps
        x_tol = tol + (noise_tolerance(hyper.noise_std) if phase == Phase.UPDATE_NOISE else 0.0)
        assert_within(ours.params[i], oracle.params[i], x_tol + output_ulp(dtype, oracle.params[i]), f"x {i}")
        s_tol = tol + (0.0 if master else output_ulp(dtype, oracle.anchors[i]))  # (16 bits: rounded as x)
        assert_within(ours.anchors[i], oracle.anchors[i], s_tol, f"s {i}")
        # the moments are sums of terms of the old moment's and of g''s size, which may cancel
        g_max = float(gp.abs().max())
        if inputs.momenta:
            m_tol = ROUNDINGS * eps * (float(inputs.momenta[i].abs().max()) + g_max)
            assert_within(ours.momenta[i], oracle.momenta[i], m_tol, f"m {i}")
        v_tol = ROUNDINGS * eps * (float(inputs.second_moments[i].abs().max()) + g_max**2)
        assert_within(ours.second_moments[i], oracle.second_moments[i], v_tol, f"v {i}")
        if v_max:
            assert_within(ours.max_second_moments[i], oracle.max_second_moments[i], v_tol, f"v_max {i}")
    for ours_step, oracle_step in zip(ours.steps, oracle.steps):
        assert float(ours_step) == float(oracle_step)
    for i, (written, sent) in enumerate(zip(ours.grads, g)):  # AMP's gradients left unscaled (a power of 2)
        assert torch.equal(written, sent if grad_scale is None else (sent.double() / grad_scale).to(dtype)), f"g {i}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(
    phase=st.sampled_from(PHASES),
    opts=adaptive_options(),
    dtype=st.sampled_from(DTYPES),
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=4),
    step=st.sampled_from([0, 1, 6]),
    grad_scale=st.sampled_from([None, 1024.0]),
    misaligned=st.booleans(),
    data_seed=st.integers(0, 2**31 - 1),
    master=st.booleans(),
)
def test_one_phase_against_float64_reference(
    backend, phase, opts, dtype, sizes, step, grad_scale, misaligned, data_seed, master
):
    run_case(backend, phase, opts, dtype, sizes, step, grad_scale, misaligned, data_seed, master=master)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("base", ["adam", "lamb", "adagrad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tolerance_catches_a_bias_correction_one_step_off(backend, base, dtype):
    """The bound is tight enough to fail: against an oracle one step further (the bias corrections of step
    t + 1 where the kernel used t, about 1% of a at t = 7; Adagrad's lr decay 1.6 for 1.5, 6%), the same
    comparison raises on x or s."""
    adagrad = base == "adagrad"
    opts = dict(
        base=base,
        lr=0.01,
        gamma=0.05,
        betas=(0.0, 1.0) if adagrad else (0.9, 0.999),
        eps=1e-8,
        weight_decay=0.01,
        decoupled=True,
        amsgrad=False,
        bias_correction=not adagrad,
        lr_decay=0.1 if adagrad else 0.0,
        grad_averaging=True,
        max_grad_norm=0.0,
        use_nvlamb=False,
        maximize=False,
        noise_std=0.01,
        seed=0,
    )
    run_case(backend, Phase.UPDATE_PAST, opts, dtype, [1000, 17], 6, None, False, 1)
    with pytest.raises(AssertionError, match=r"^[xs] \d: "):  # (on a value: the step counts are checked last)
        run_case(backend, Phase.UPDATE_PAST, opts, dtype, [1000, 17], 6, None, False, 1, oracle_step=7)


def lamb_sums(backend: str, phase: Phase, b: Bucket, h: Hyper) -> torch.Tensor:
    """A kernel backend's LAMB reading pass: the operator extrap_kernels::norms (cpu, cuda) or the Triton
    kernels' (triton)."""
    if backend == "triton":
        from extrap_kernels.backends import triton_lamb

        return triton_lamb.lamb_sums(phase, b, h, None)
    from extrap_kernels.backends import extension

    return extension.prepared_call(phase, b, h, kind="norms", backend=backend)(b.grads, None, None, None)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "foreach"])
def test_lamb_norms_are_the_reference_norms(backend):
    """LAMB's reading pass: per tensor, the sums of s^2 and of u^2 equal the reference's float64 norms of the
    anchor and of the undamped direction, in every phase."""
    gen = torch.Generator().manual_seed(4)
    sizes = [0, 5, 4097, 65536 + 3]
    x = [torch.randn(n, generator=gen) for n in sizes]
    g = [torch.randn(n, generator=gen) for n in sizes]
    m = [0.1 * torch.randn(n, generator=gen) for n in sizes]
    v = [0.01 * torch.rand(n, generator=gen) for n in sizes]
    h = LambHyper(lr=0.01, weight_decay=0.01, decoupled=True, betas=(0.9, 0.99), eps=1e-6)
    for phase in PHASES:
        b = adaptive_bucket(phase, x, g, [t + 0.5 for t in x], m, v, [], 2, None)
        sums = lamb_sums(backend, phase, b, h)
        assert sums.shape == (len(sizes), 2) and sums.dtype == torch.float32
        without_trust = AdamHyper.from_group(asdict(h))  # u: e without trust
        for i, (s, e, _) in enumerate(directions(phase, b, without_trust, None)):
            expected = torch.tensor([float((s * s).sum()), float((e * e).sum())], dtype=torch.float64)
            assert torch.allclose(
                sums[i].double(), expected, rtol=sizes[i] * state_eps(torch.float32) + 1e-12, atol=0
            ), (phase, i, sums[i], expected)
