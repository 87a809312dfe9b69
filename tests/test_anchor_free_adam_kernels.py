"""One launch of Adam's, AdamW's and LAMB's anchor-free past update (adam_update_past_anchor_free_; Triton's phase
4; LAMB's reading pass before it) on every kernel backend against the float64 reference on the same random inputs
(hypothesis): sizes from 0 to past a block, fp32 and fp64, every option the update takes, arbitrary recovery weights
(0 included: a fresh x), step counts from the first. The tolerance is derived from the dtype and the magnitudes the
launch combines; the control (the reference recovering with the bias corrections one step off) fails it."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS, assert_within, misaligned_copy, state_eps
from hypothesis import given, settings
from hypothesis import strategies as st

import extrap_kernels as ek
from extrap_kernels import recovery, reference_adaptive
from extrap_kernels.bucket import Bucket, Phase
from extrap_kernels.hyper import AdamHyper, LambHyper

PHASE = Phase.UPDATE_PAST_ANCHOR_FREE
SIZES = [0, 1, 3, 17, 255, 1000, 4097, 65536 + 3]
# roundings per element: the recovery (a's quotient, sqrt, divisions and sum: 5; r0 * x, r1 * a and the two sums:
# 4) and the step from the recovered s (test_adaptive_kernels.py's 24 for g', the moments, a, e, s and x), with
# margin
ROUNDINGS = 40


@st.composite
def adam_options(draw):
    lamb = draw(st.booleans())  # (LAMB: the trust ratio of its reading pass, which recovers s as well)
    return dict(
        base="lamb" if lamb else "adam",
        grad_averaging=draw(st.booleans()) if lamb else True,
        max_grad_norm=draw(st.sampled_from([0.0, 0.5])) if lamb else 0.0,
        use_nvlamb=lamb and draw(st.booleans()),
        lr=draw(st.floats(1e-4, 0.1)),
        gamma=draw(st.floats(0.0, 0.3)),
        betas=(draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.99, 0.999]))),
        eps=draw(st.sampled_from([1e-10, 1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.1])),
        decoupled=draw(st.booleans()),
        amsgrad=not lamb and draw(st.booleans()),
        bias_correction=draw(st.booleans()),
        maximize=draw(st.booleans()),
    )


def _inputs(opts, dtype, sizes, weights, misaligned, data_seed):
    gen = torch.Generator().manual_seed(data_seed)
    x = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    g = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    m = [0.1 * torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    v = [0.01 * torch.rand(n, generator=gen, dtype=dtype) for n in sizes]
    v_max = [t + 0.01 * torch.rand(t.shape, generator=gen, dtype=dtype) for t in v] if opts["amsgrad"] else []
    r = [torch.tensor(weights, dtype=dtype) for _ in sizes]
    if misaligned:  # the last tensor one element into its storage: the kernels' scalar path
        x[-1], g[-1], m[-1], v[-1] = map(misaligned_copy, (x[-1], g[-1], m[-1], v[-1]))
    return x, g, m, v, v_max, r


def _bucket(inputs, step):
    """A bucket as the optimizers build it for this phase: the parameters are their own anchors."""

    def copies(tensors):  # (of the same alignment: a misaligned tensor stays misaligned)
        return [misaligned_copy(t) if t.storage_offset() else t.clone() for t in tensors]

    x, g, m, v, v_max, r = (copies(t) for t in inputs)
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in g))  # (LAMB's global gradient norm, for its clipping)
    return Bucket(
        params=x,
        grads=g,
        anchors=x,
        momenta=m,
        steps=[torch.tensor(float(step)) for _ in x],
        indices=list(range(len(x))),
        last_gammas=r,
        second_moments=v,
        max_second_moments=v_max,
        global_grad_norm=norm,
    )


def run_case(backend, opts, dtype, sizes, step, weights, misaligned, data_seed, oracle_step=None):
    """One launch of `backend` and of the reference (`oracle_step`: given another count, for the control)."""
    inputs = _inputs(opts, dtype, sizes, weights, misaligned, data_seed)
    hyper = (LambHyper if opts.get("base") == "lamb" else AdamHyper).from_group(opts)
    ours, oracle = _bucket(inputs, step), _bucket(inputs, step if oracle_step is None else oracle_step)
    ek.backends.resolve(backend, torch.device("cpu")).apply(PHASE, ours, hyper, None, None)
    reference_adaptive.apply(PHASE, oracle, hyper, None, compute_dtype=torch.float64)
    eps = state_eps(dtype)
    x, _, m, v, v_max, r = inputs
    for i in range(len(sizes)):
        if x[i].numel() == 0:
            continue
        second = (v_max or v)[i].double()
        s = recovery.recovered(x[i].double(), m[i].double(), second, r[i].double(), step, hyper)
        recovered_terms = float(x[i].abs().max()) * (1 + abs(weights[0])) + float((s - x[i]).abs().max())
        moved = float((oracle.params[i].double() - s).abs().max())  # ((lr + gamma) * |e|)
        tol = ROUNDINGS * eps * (recovered_terms + float(s.abs().max()) + moved)
        trust_eps = x[i].numel() * eps if hyper.base == "lamb" else 0.0  # (its two sums of numel squares)
        tol += moved * trust_eps
        assert_within(ours.params[i], oracle.params[i], tol, f"x {i}")
        g_max = float(inputs[1][i].abs().max()) + hyper.weight_decay * float(s.abs().max())  # (g')
        assert_within(ours.momenta[i], oracle.momenta[i], ROUNDINGS * eps * (float(m[i].abs().max()) + g_max), f"m {i}")
        v_tol = ROUNDINGS * eps * (float(v[i].abs().max()) + g_max**2)
        assert_within(ours.second_moments[i], oracle.second_moments[i], v_tol, f"v {i}")
        if v_max:
            assert_within(ours.max_second_moments[i], oracle.max_second_moments[i], v_tol, f"v_max {i}")
        assert_within(
            ours.last_gammas[i],
            oracle.last_gammas[i],
            (8 * eps + 2 * trust_eps) * float(oracle.last_gammas[i].abs().max()),
            "r",
        )
    assert [float(t) for t in ours.steps] == [step + 1.0] * len(sizes)


# (a quarter of the suite's examples: one phase of one base, where test_adaptive_kernels.py draws from all of them)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=max(10, settings.default.max_examples // 4))
@given(
    opts=adam_options(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=4),
    step=st.sampled_from([0, 1, 6]),
    weights=st.sampled_from([(0.0, 0.0), (0.0, 0.05), (1e-3, 0.1), (0.02, 0.3)]),
    misaligned=st.booleans(),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_one_launch_against_float64_reference(backend, opts, dtype, sizes, step, weights, misaligned, data_seed):
    run_case(backend, opts, dtype, sizes, step, weights, misaligned, data_seed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tolerance_catches_a_bias_correction_one_step_off(backend):
    """The control: the same launch against a reference one count ahead (its recovery and its update corrected
    for the wrong steps) is outside the tolerance, which is what makes the test above able to fail."""
    opts = dict(lr=0.01, gamma=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decoupled=True)
    opts.update(amsgrad=False, bias_correction=True, maximize=False)
    run_case(backend, opts, torch.float32, [1000, 17], 3, (1e-3, 0.1), False, 1)
    with pytest.raises(AssertionError):
        run_case(backend, opts, torch.float32, [1000, 17], 3, (1e-3, 0.1), False, 1, oracle_step=4)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "foreach"])
def test_lamb_reading_pass_sums_the_recovered_anchor(backend):
    """LAMB's reading pass in this phase: per tensor, the sums of s^2 and of u^2 are the float64 norms of the
    anchor recovered from x and of the undamped direction from it. The control: the sums of x itself (the anchor
    not recovered) are outside the same tolerance."""
    from test_adaptive_kernels import lamb_sums

    opts = dict(base="lamb", lr=0.01, gamma=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, decoupled=True)
    opts.update(amsgrad=False, bias_correction=True, maximize=False, grad_averaging=True, max_grad_norm=0.0)
    sizes, step = [0, 5, 4097, 65536 + 3], 2
    inputs = _inputs(opts, torch.float32, sizes, (0.02, 0.3), False, 4)
    hyper, without_trust = LambHyper.from_group(opts), AdamHyper.from_group(opts)  # (u: e without the trust)
    sums = lamb_sums(backend, PHASE, _bucket(inputs, step), hyper)
    assert sums.shape == (len(sizes), 2) and sums.dtype == torch.float32
    x, g, m, v, _, r = (list(map(torch.Tensor.double, t)) for t in inputs)
    eps = state_eps(torch.float32)
    for i, n in enumerate(sizes):
        s = recovery.recovered(x[i], m[i], v[i], r[i], step, hyper)
        g_prime = reference_adaptive.regularized_grad(g[i], s, without_trust, 1.0, 1.0)
        m_new, v_new, _ = reference_adaptive.moments(m[i], v[i], None, g_prime, without_trust)
        u = reference_adaptive.direction(s, m_new, v_new, None, step + 1, without_trust)
        expected = torch.stack([(s * s).sum(), (u * u).sum()])
        rtol = (n + ROUNDINGS) * eps  # (a sum of n squares, of terms a few roundings off)
        assert torch.allclose(sums[i].double(), expected, rtol=rtol, atol=1e-12), (i, sums[i], expected)
        if n:
            assert not torch.allclose((x[i] * x[i]).sum(), expected[0], rtol=rtol, atol=1e-12)
