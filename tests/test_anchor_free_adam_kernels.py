"""One launch of Adam's and AdamW's anchor-free past update (adam_update_past_anchor_free_; Triton's phase 4) on
every kernel backend against the float64 reference on the same random inputs (hypothesis): sizes from 0 to past
a block, fp32 and fp64, every option the update takes, arbitrary recovery weights (0 included: a fresh x), step
counts from the first. The tolerance is derived from the dtype and the magnitudes the launch combines; the
control (the reference recovering with the bias corrections one step off) fails it."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS, assert_within, misaligned_copy, state_eps
from hypothesis import given, settings
from hypothesis import strategies as st

import extrap_kernels as ek
from extrap_kernels import recovery, reference_adaptive
from extrap_kernels.bucket import Bucket, Phase
from extrap_kernels.hyper import AdamHyper

PHASE = Phase.UPDATE_PAST_ANCHOR_FREE
SIZES = [0, 1, 3, 17, 255, 1000, 4097, 65536 + 3]
# roundings per element: the recovery (a's quotient, sqrt, divisions and sum: 5; r0 * x, r1 * a and the two sums:
# 4) and the step from the recovered s (test_adaptive_kernels.py's 24 for g', the moments, a, e, s and x), with
# margin
ROUNDINGS = 40


@st.composite
def adam_options(draw):
    return dict(
        lr=draw(st.floats(1e-4, 0.1)),
        gamma=draw(st.floats(0.0, 0.3)),
        betas=(draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.99, 0.999]))),
        eps=draw(st.sampled_from([1e-10, 1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.1])),
        decoupled=draw(st.booleans()),
        amsgrad=draw(st.booleans()),
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
    )


def run_case(backend, opts, dtype, sizes, step, weights, misaligned, data_seed, oracle_step=None):
    """One launch of `backend` and of the reference (`oracle_step`: given another count, for the control)."""
    inputs = _inputs(opts, dtype, sizes, weights, misaligned, data_seed)
    hyper = AdamHyper.from_group(opts)
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
        assert_within(ours.params[i], oracle.params[i], tol, f"x {i}")
        g_max = float(inputs[1][i].abs().max()) + hyper.weight_decay * float(s.abs().max())  # (g')
        assert_within(ours.momenta[i], oracle.momenta[i], ROUNDINGS * eps * (float(m[i].abs().max()) + g_max), f"m {i}")
        v_tol = ROUNDINGS * eps * (float(v[i].abs().max()) + g_max**2)
        assert_within(ours.second_moments[i], oracle.second_moments[i], v_tol, f"v {i}")
        if v_max:
            assert_within(ours.max_second_moments[i], oracle.max_second_moments[i], v_tol, f"v_max {i}")
        assert_within(
            ours.last_gammas[i], oracle.last_gammas[i], 8 * eps * float(oracle.last_gammas[i].abs().max()), "r"
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
