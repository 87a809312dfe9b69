"""Every backend against the reference: random shapes, options, dtypes and hyperparameters, over
multi-step trajectories. The oracle is the reference backend run on float64 copies of the same
parameters with the same (dtype-rounded) gradients, so the comparison bounds each backend's own
rounding with a tolerance derived from the dtype (conftest.trajectory_tolerance)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    DTYPES,
    anchor_of,
    assert_within,
    examples_for,
    misaligned_copy,
    noise_tolerance,
    output_ulp,
    over_backends,
    phase_bucket,
    state_eps,
    trajectory_tolerance,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import extrap_kernels as ek
from extrap_kernels import reference
from extrap_kernels.bucket import Phase, state_dtype
from extrap_kernels.hyper import SGDHyper

# 0, 1, odd, power-of-two, and sizes across the CPU kernel's 65536-element chunks
SIZES = [0, 1, 2, 3, 5, 17, 64, 255, 1000, 4097, 65536 + 3]
# The trajectories' sizes: the same but for the one past the CPU kernel's chunk, which the one-phase test crosses (a
# trajectory repeats that launch; with it, a quarter of the examples held 64K elements and took most of CI's test time)
TRAJECTORY_SIZES = SIZES[:-1]
STEPS = 20


@st.composite
def options(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(
        mode=draw(st.sampled_from(["past", "local", "noise"])),
        lr=draw(st.floats(1e-3, 0.3)),
        gamma=draw(st.one_of(st.none(), st.floats(0.0, 0.3))),
        momentum=momentum,
        dampening=0.0 if nesterov or momentum == 0 else draw(st.sampled_from([0.0, 0.1, 0.5])),
        nesterov=nesterov,
        weight_decay=draw(st.sampled_from([0.0, 1e-4, 1e-2])),
        maximize=draw(st.booleans()),
        lars=(lars := draw(st.booleans())),
        trust_coefficient=draw(st.sampled_from([0.001, 0.02, 1.0])) if lars else 0.001,
        lars_clip=lars and draw(st.booleans()),
        extrapolate_with_momentum=draw(st.booleans()),
        past=draw(st.sampled_from(["update", "grad"])),
        noise_std=draw(st.sampled_from([0.0, 1e-3, 0.05])),
        seed=draw(st.integers(0, 2**63 - 1)),
    )


@over_backends
def test_trajectory_matches_reference(backend):
    @settings(max_examples=examples_for(backend))
    @given(
        opts=options(),
        dtype=st.sampled_from(DTYPES),
        sizes=st.lists(st.sampled_from(TRAJECTORY_SIZES), min_size=1, max_size=6),
        grad_scale=st.sampled_from([None, 1024.0, 3.0]),
        data_seed=st.integers(0, 2**31 - 1),
    )
    def trajectory(opts, dtype, sizes, grad_scale, data_seed):
        gen = torch.Generator().manual_seed(data_seed)
        init = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]
        params = [torch.nn.Parameter(t.to(dtype)) for t in init]
        exact = [torch.nn.Parameter(p.detach().to(torch.float64, copy=True)) for p in params]
        opt = ek.ExtrapSGD(params, backend=backend, **opts)
        oracle = ek.ExtrapSGD(exact, backend="reference", **opts)
        scale = torch.tensor(grad_scale) if grad_scale else None
        magnitude = max([1.0] + [float(t.abs().max()) for t in init if t.numel()])
        phases = 2 if opts["mode"] == "local" else 1
        for step in range(STEPS):
            for phase in range(phases):
                for p, q in zip(params, exact):
                    g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (grad_scale or 1.0)
                    p.grad = g.to(dtype)
                    q.grad = p.grad.to(torch.float64, copy=True)  # both see the same rounded gradient
                    if g.numel():
                        magnitude = max(magnitude, float(q.grad.abs().max()) / (grad_scale or 1.0))
                if phase == 0 and phases == 2:
                    opt.extrapolate(grad_scale=scale)
                    oracle.extrapolate(grad_scale=scale)
                else:
                    opt.step(grad_scale=scale)
                    oracle.step(grad_scale=scale)
            for q in exact:
                if q.numel():
                    magnitude = max(magnitude, float(q.detach().abs().max()))
            tol = trajectory_tolerance(dtype, step + 1, magnitude, opts["momentum"], max(sizes) if opts["lars"] else 0)
            x_tol = tol + (noise_tolerance(opts["noise_std"]) if opts["mode"] == "noise" else 0.0)
            for i, (p, q) in enumerate(zip(params, exact)):
                assert_within(p.detach(), q.detach(), x_tol + output_ulp(dtype, q.detach()), f"step {step} param {i}")
                if opts["momentum"]:
                    assert_within(
                        opt.state[p]["momentum_buffer"],
                        oracle.state[q]["momentum_buffer"],
                        tol,
                        f"step {step} momentum {i}",
                    )
                if opts["mode"] != "local":  # (local: the anchor is a snapshot, taken next time)
                    assert_within(
                        anchor_of(opt.state[p], p), anchor_of(oracle.state[q], q), tol, f"step {step} anchor {i}"
                    )
                if "last_gamma" in opt.state[p]:  # the anchor-free past update's: the gamma, rounded to the state dtype
                    expected = float(oracle.state[q]["last_gamma"])
                    assert_within(
                        opt.state[p]["last_gamma"],
                        oracle.state[q]["last_gamma"],
                        state_eps(dtype) * expected + torch.finfo(state_dtype(dtype)).tiny,
                        f"step {step} gamma {i}",
                    )
                assert float(opt.state[p]["step"]) == step + 1

    trajectory()


def anchor_free_case(phase, opts, dtype):
    """The options and dtype a phase runs with: the anchor-free update only exists with heavy-ball
    momentum on full-precision parameters (hyper.SGDHyper.anchor_free)."""
    if phase != Phase.UPDATE_PAST_ANCHOR_FREE:
        return opts, dtype
    opts = dict(opts, momentum=opts["momentum"] or 0.9, nesterov=False, lars=False, lars_clip=False, past="update")
    return opts, dtype if dtype in (torch.float32, torch.float64) else torch.float32


@over_backends
@given(
    phase=st.sampled_from(list(Phase)),
    opts=options(),
    dtype=st.sampled_from(DTYPES),
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=5),
    step=st.sampled_from([0, 1, 6]),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_one_phase_against_float64_reference(backend, phase, opts, dtype, sizes, step, data_seed):
    """One launch on identical inputs against the reference evaluated in float64: the error is the
    backend's own rounding of a single step."""
    opts, dtype = anchor_free_case(phase, opts, dtype)
    gen = torch.Generator().manual_seed(data_seed)
    sdtype = state_dtype(dtype)
    x = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    g = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    s = [t.to(sdtype) + 0.01 * torch.randn(t.shape, generator=gen, dtype=sdtype) for t in x]
    m = [torch.randn(n, generator=gen, dtype=sdtype) for n in sizes] if opts["momentum"] else []
    gamma = opts["lr"] if opts["gamma"] is None else opts["gamma"]
    hyper = SGDHyper(
        **{k: v for k, v in opts.items() if k not in ("mode", "past", "gamma")},
        gamma=gamma,
        past_grad=opts["past"] == "grad",
    )
    last = [torch.rand((), generator=gen, dtype=sdtype) * 0.3 for _ in sizes]
    ours = phase_bucket([t.clone() for t in x], g, [t.clone() for t in s], [t.clone() for t in m], step, phase, last)
    oracle = phase_bucket([t.clone() for t in x], g, [t.clone() for t in s], [t.clone() for t in m], step, phase, last)
    ek.backends.resolve(backend, torch.device("cpu")).apply(phase, ours, hyper, None, None)
    reference.apply(phase, oracle, hyper, compute_dtype=torch.float64)
    magnitude = max([1.0] + [float(t.abs().max()) for t in (*x, *g, *s, *m) if t.numel()])
    if phase == Phase.UPDATE_PAST_ANCHOR_FREE:
        assert [float(t) for t in ours.last_gammas] == [float(torch.tensor(gamma, dtype=sdtype))] * len(sizes)
    tol = trajectory_tolerance(dtype, 1, magnitude, opts["momentum"], max(sizes) if opts["lars"] else 0)
    x_tol = tol + (noise_tolerance(opts["noise_std"]) if phase == Phase.UPDATE_NOISE else 0.0)
    for i in range(len(sizes)):
        assert_within(ours.params[i], oracle.params[i], x_tol + output_ulp(dtype, oracle.params[i]), f"x {i}")
        assert_within(ours.anchors[i], oracle.anchors[i], tol, f"s {i}")
        if m:
            assert_within(ours.momenta[i], oracle.momenta[i], tol, f"m {i}")


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")
@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_launch_with_streaming_stores(phase, dtype):
    """Launches past the CPU kernel's streaming threshold write through non-temporal stores (staged
    blocks, an unaligned tensor start, a tail shorter than a block): the same values as the reference.
    (The anchor-free update writes only arrays it reads, and streams nothing: it is here for its size.)"""
    if phase == Phase.UPDATE_PAST_ANCHOR_FREE and dtype != torch.float32:
        pytest.skip("the anchor-free update runs on full-precision parameters only")
    total = ek._ext.load().cpu_stream_above + 1037
    sizes = [total // 3 + 1, total - total // 3 - 1]
    gen = torch.Generator().manual_seed(int(phase))
    sdtype = state_dtype(dtype)
    x = [torch.randn(n + 1, generator=gen).to(dtype)[1:] for n in sizes]  # storage offset: unaligned start
    g = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    s = [t.to(sdtype) + 0.01 * torch.randn(t.shape, generator=gen, dtype=sdtype) for t in x]
    m = [torch.randn(n, generator=gen, dtype=sdtype) for n in sizes]
    hyper = SGDHyper(lr=0.1, gamma=0.05, momentum=0.9, weight_decay=1e-3, noise_std=0.01, seed=3)
    last = [torch.tensor(0.04) for _ in sizes]
    ours = phase_bucket([t.clone() for t in x], g, [t.clone() for t in s], [t.clone() for t in m], 3, phase, last)
    oracle = phase_bucket([t.clone() for t in x], g, [t.clone() for t in s], [t.clone() for t in m], 3, phase, last)
    ek.backends.resolve("cpu", torch.device("cpu")).apply(phase, ours, hyper, None, None)
    reference.apply(phase, oracle, hyper, compute_dtype=torch.float64)
    magnitude = max(float(t.abs().max()) for t in (*x, *g, *s, *m))
    tol = trajectory_tolerance(dtype, 1, magnitude, 0.9)
    x_tol = tol + (noise_tolerance(0.01) if phase == Phase.UPDATE_NOISE else 0.0)
    for i in range(len(sizes)):
        assert_within(ours.params[i], oracle.params[i], x_tol + output_ulp(dtype, oracle.params[i]), f"x {i}")
        assert_within(ours.anchors[i], oracle.anchors[i], tol, f"s {i}")
        assert_within(ours.momenta[i], oracle.momenta[i], tol, f"m {i}")


def test_tolerance_is_tight_enough_to_fail():
    """The bound of a 1-step fp32 comparison is far below a one-ulp error in bf16, so a kernel that
    rounded its state to 16 bits would fail the tests above."""
    assert trajectory_tolerance(torch.float32, 1, 1.0, 0.0) < torch.finfo(torch.bfloat16).eps / 100
    assert state_eps(torch.bfloat16) == torch.finfo(torch.float32).eps


@over_backends
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name.lower())
@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
def test_whole_blocks_and_misaligned_buckets(backend, phase, misaligned):
    """A bucket whose tensors all start on 16 bytes takes the kernels' vector paths (Triton: unmasked whole
    blocks, with alignment hints; CUDA and CPU: vector loops), one misaligned tensor (a storage offset of one
    element) the scalar ones for it or, in Triton, for the whole bucket: both give the reference's values."""
    sizes = [2 * 16384 + 5, 2 * 65536, 17]
    gen = torch.Generator().manual_seed(int(phase) + 10 * misaligned)
    x = [torch.randn(n, generator=gen) for n in sizes]
    g = [torch.randn(n, generator=gen) for n in sizes]
    s = [t + 0.01 * torch.randn(t.shape, generator=gen) for t in x]
    m = [torch.randn(n, generator=gen) for n in sizes]
    last = [torch.tensor(0.04) for _ in sizes]
    hyper = SGDHyper(lr=0.1, gamma=0.05, momentum=0.9, weight_decay=1e-3, noise_std=0.01, seed=5)

    def copy(t, i):  # the last tensor one element into its storage when misaligned
        return misaligned_copy(t) if misaligned and i == 2 else t.clone()

    ours = phase_bucket(
        [copy(t, i) for i, t in enumerate(x)],
        [copy(t, i) for i, t in enumerate(g)],
        [copy(t, i) for i, t in enumerate(s)],
        [copy(t, i) for i, t in enumerate(m)],
        2,
        phase,
        last,
    )
    oracle = phase_bucket([t.clone() for t in x], g, [t.clone() for t in s], [t.clone() for t in m], 2, phase, last)
    assert (ours.params[2].data_ptr() % 16 != 0) is misaligned
    if backend == "triton":
        from extrap_kernels.backends import triton_common, triton_sgd

        aligned = triton_common.cached_tables(ours, triton_sgd.sgd_columns(ours))[-1]
        assert aligned is not misaligned  # the bucket's ALIGNED switch
    ek.backends.resolve(backend, torch.device("cpu")).apply(phase, ours, hyper, None, None)
    reference.apply(phase, oracle, hyper, compute_dtype=torch.float64)
    magnitude = max(float(t.abs().max()) for t in (*x, *g, *s, *m))
    tol = trajectory_tolerance(torch.float32, 1, magnitude, 0.9)
    x_tol = tol + (noise_tolerance(0.01) if phase == Phase.UPDATE_NOISE else 0.0)
    for i in range(len(sizes)):
        assert_within(ours.params[i], oracle.params[i], x_tol, f"x {i}")
        assert_within(ours.anchors[i], oracle.anchors[i], tol, f"s {i}")
        assert_within(ours.momenta[i], oracle.momenta[i], tol, f"m {i}")
