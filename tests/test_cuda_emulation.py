"""The CUDA launcher and kernels (csrc/cuda) in their host emulation (csrc/emulation): the `cuda` backend on
CPU tensors. The hypothesis suites of the other test files run it like every CPU backend; this file
checks that it is there, and the launcher's boundaries, which the emulation's small limits
(extrap_kernels/_ext.py, EMULATION_LIMITS) put within reach of small tensors: a table with more tensors
than it holds, a tensor split across launches, a launch filled exactly, vector tails and misaligned
tensors (the scalar path), with found_inf and tensor rates. Every boundary is crossed with both of the
launcher's tables: the large one, and the 4 KB fallback of a driver before CUDA 12.1 (forced here), whose
launches hold fewer tensors and blocks."""

from __future__ import annotations

import os
import zlib

import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    assert_within,
    misaligned_copy,
    noise_tolerance,
    output_ulp,
    phase_bucket,
    trajectory_tolerance,
)
from test_adaptive_kernels import PHASES as ADAPTIVE_PHASES
from test_adaptive_kernels import run_case

import extrap_kernels as ek
from extrap_kernels import reference
from extrap_kernels.bucket import Phase, state_dtype
from extrap_kernels.hyper import SGDHyper

LIMITS = ek._ext.EMULATION_LIMITS
CHUNK = LIMITS["EXTRAP_CHUNK_SIZE"]
# table -> (tensors, blocks) per launch
TABLES = {
    "large": (LIMITS["EXTRAP_TABLE_TENSORS"], LIMITS["EXTRAP_TABLE_BLOCKS"]),
    "small": (LIMITS["EXTRAP_SMALL_TABLE_TENSORS"], LIMITS["EXTRAP_SMALL_TABLE_BLOCKS"]),
}

pytestmark = pytest.mark.skipif(not ek._ext.cuda_emulation_requested(), reason="EXTRAP_CUDA_EMULATION is not 1")


def cases(table: str) -> dict[str, tuple[list[int], tuple[int, ...]]]:
    """name -> (sizes, which of them start misaligned: a storage offset of one element), at the limits of
    `table`."""
    tensors, blocks = TABLES[table]
    launch = CHUNK * blocks  # elements one launch covers at most
    return {
        "more-tensors-than-a-table": ([1, 5, 0, 3, 7, 2, 9, 0, 4], ()),
        "tensor-across-launches": ([2 * launch + CHUNK + 3], ()),
        "launch-filled-exactly": ([launch, launch - CHUNK, CHUNK], ()),
        # the table's last entry takes the launch's last block at its own last chunk: both limits at once
        "last-entry-and-last-block": ([CHUNK] * (tensors - 1) + [(blocks - tensors + 1) * CHUNK, 5], ()),
        # the last entry's chunks run past the launch: it continues as entry 0 of the next table
        "last-entry-continues": ([CHUNK] * (tensors - 1) + [(blocks + 2) * CHUNK + 1, 3], ()),
        "vector-tails": ([CHUNK - 1, CHUNK + 7, 2 * CHUNK + 5, 3], ()),
        "misaligned": ([CHUNK + 9, 2 * CHUNK, 17, launch + 3], (0, 3)),
    }


CASE_NAMES = list(cases("large"))


@pytest.fixture(params=list(TABLES))
def table(request):
    """Each launch of the test with the large table, or with the 4 KB one forced (restored after)."""
    ext = ek._ext.load_cuda_emulation()
    forced = not ext.large_kernel_args()  # (EXTRAP_TEST_SMALL_TABLES=1 forces the whole run: conftest)
    ext.force_small_kernel_args(request.param == "small")
    try:
        assert ext.large_kernel_args() == (request.param == "large")
        yield request.param
    finally:
        ext.force_small_kernel_args(forced)


def test_the_emulation_is_built():
    """Requested (conftest asks for it), it must build: a broken build would silently drop the device
    code from every backend test."""
    assert "cuda" in CPU_BACKENDS, getattr(ek._ext.load_cuda_emulation, "error", "")
    ext = ek._ext.load_cuda_emulation()
    assert ext.emulates_cuda and ext.ops_namespace == "extrap_kernels_cuda_emulation"
    assert not ek._ext.load().emulates_cuda  # the extension itself runs the CPU kernel on CPU tensors
    assert ek.backends.resolve("auto", torch.device("cpu")).name == "cpu"  # never chosen by "auto"


@pytest.mark.parametrize("name", list(TABLES))
def test_the_cases_reach_the_boundaries(name):
    """Each boundary case crosses what its name says (so a change of the limits cannot quietly void them),
    and the two tables' limits differ (so the small table's cases are boundaries of their own)."""
    tensors, blocks = TABLES[name]
    table_cases = cases(name)
    sizes = table_cases["more-tensors-than-a-table"][0]
    assert sum(n > 0 for n in sizes) > 2 * tensors
    assert table_cases["tensor-across-launches"][0][0] > 2 * CHUNK * blocks
    tail = table_cases["last-entry-and-last-block"][0]
    assert (tensors - 1) + tail[tensors - 1] // CHUNK == blocks
    assert (tensors - 1) + -(-table_cases["last-entry-continues"][0][tensors - 1] // CHUNK) > blocks
    assert any(n % 8 for n in table_cases["vector-tails"][0])
    assert TABLES["small"][0] < TABLES["large"][0] and TABLES["small"][1] < TABLES["large"][1]


def test_large_kernel_arguments_by_default_and_the_fallback_when_forced():
    ext = ek._ext.load_cuda_emulation()
    forced = os.environ.get("EXTRAP_TEST_SMALL_TABLES") == "1"
    assert ext.large_kernel_args() == (not forced)
    ext.force_small_kernel_args(True)
    try:
        assert not ext.large_kernel_args()
    finally:
        ext.force_small_kernel_args(forced)
    assert ext.large_kernel_args() == (not forced)


def _inputs(sizes, dtype, gen, momentum):
    sdtype = state_dtype(dtype)
    x = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    g = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    s = [t.to(sdtype) + 0.01 * torch.randn(t.shape, generator=gen, dtype=sdtype) for t in x]
    m = [torch.randn(n, generator=gen, dtype=sdtype) for n in sizes] if momentum else []
    last = [torch.rand((), generator=gen, dtype=sdtype) * 0.3 for _ in sizes]
    return x, g, s, m, last


def _buckets(phase, sizes, misaligned, x, g, s, m, last):
    """The launch's bucket and the oracle's, on copies; the tensors listed in `misaligned` start one element
    into their storage in the launch's (no 16-byte alignment: the kernel's scalar path)."""

    def copy(tensors):
        return [misaligned_copy(t) if i in misaligned else t.clone() for i, t in enumerate(tensors)]

    ours = phase_bucket(copy(x), copy(g), copy(s), copy(m), 3, phase, last)
    for i in misaligned:
        assert ours.params[i].data_ptr() % 16 != 0
    oracle = phase_bucket([t.clone() for t in x], g, [t.clone() for t in s], [t.clone() for t in m], 3, phase, last)
    return ours, oracle


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name.lower())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("variant", ["plain", "no-momentum", "tensor-rates", "grad-scale"])
def test_launch_boundaries_against_reference(table, case, phase, dtype, variant):
    anchor_free = phase == Phase.UPDATE_PAST_ANCHOR_FREE
    if anchor_free and (dtype not in (torch.float32, torch.float64) or variant == "no-momentum"):
        pytest.skip("the anchor-free update runs with momentum on full-precision parameters only")
    sizes, misaligned = cases(table)[case]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case} {phase} {dtype} {variant}".encode()))
    momentum = 0.0 if variant == "no-momentum" else 0.9
    lr, gamma = 0.1, 0.05
    if variant == "tensor-rates":
        lr, gamma = torch.tensor(0.1), torch.tensor(0.05)
    hyper = SGDHyper(lr=lr, gamma=gamma, momentum=momentum, weight_decay=1e-3, noise_std=0.01, seed=11)
    grad_scale = torch.tensor([512.0]) if variant == "grad-scale" else None
    x, g, s, m, last = _inputs(sizes, dtype, gen, momentum)
    if grad_scale is not None:
        g = [t * 512 for t in g]
    ours, oracle = _buckets(phase, sizes, misaligned, x, g, s, m, last)
    ek.backends.resolve("cuda", torch.device("cpu")).apply(phase, ours, hyper, grad_scale, None)
    reference.apply(phase, oracle, hyper, grad_scale, compute_dtype=torch.float64)
    magnitude = max([1.0] + [float(t.abs().max()) for t in (*x, *s, *m) if t.numel()])
    tol = trajectory_tolerance(dtype, 1, magnitude, momentum)
    x_tol = tol + (noise_tolerance(0.01) if phase == Phase.UPDATE_NOISE else 0.0)
    for i in range(len(sizes)):
        assert_within(ours.params[i], oracle.params[i], x_tol + output_ulp(dtype, oracle.params[i]), f"x {i}")
        assert_within(ours.anchors[i], oracle.anchors[i], tol, f"s {i}")
        if m:
            assert_within(ours.momenta[i], oracle.momenta[i], tol, f"m {i}")
        assert float(ours.steps[i]) == float(oracle.steps[i])
        assert torch.equal(ours.grads[i], oracle.grads[i]), f"g {i}"  # (unscaled by both, by a power of 2)
    if anchor_free:
        assert [float(t) for t in ours.last_gammas] == [float(t) for t in oracle.last_gammas]


@pytest.mark.parametrize("case", ["more-tensors-than-a-table", "tensor-across-launches", "misaligned"])
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name.lower())
def test_found_inf_writes_what_the_reference_writes(table, case, phase):
    """A skipped launch (found_inf set, shape [1] as GradScaler makes it) leaves what the reference leaves,
    bit for bit, and counts no step."""
    sizes, misaligned = cases(table)[case]
    gen = torch.Generator().manual_seed(int(phase))
    x, g, s, m, last = _inputs(sizes, torch.float32, gen, 0.9)
    g[0][:1] = float("inf") if g[0].numel() else 0.0
    hyper = SGDHyper(lr=0.1, gamma=0.05, momentum=0.9)
    found_inf = torch.tensor([1.0])
    ours, oracle = _buckets(phase, sizes, misaligned, x, g, s, m, last)
    ek.backends.resolve("cuda", torch.device("cpu")).apply(phase, ours, hyper, None, found_inf)
    reference.apply(phase, oracle, hyper, None, found_inf)
    for name in ("params", "anchors", "momenta", "steps", "last_gammas"):
        for i, (a, b) in enumerate(zip(getattr(ours, name), getattr(oracle, name))):
            assert torch.equal(a, b), f"{name} {i}"


ADAPTIVE_OPTIONS = dict(
    lr=0.01,
    gamma=0.05,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.01,
    decoupled=True,
    amsgrad=False,
    bias_correction=True,
    grad_averaging=True,
    max_grad_norm=0.0,
    use_nvlamb=False,
    maximize=False,
    noise_std=0.01,
    seed=3,
)


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("base", ["adam", "lamb"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_adaptive_launch_boundaries_against_reference(table, case, base, dtype):
    """The adaptive kernels and LAMB's reading pass across the same boundaries, every phase, amsgrad on
    for Adam: test_adaptive_kernels' comparison with the float64 reference and its tolerance."""
    sizes, misaligned = cases(table)[case]
    opts = dict(ADAPTIVE_OPTIONS, base=base, amsgrad=base == "adam")
    for phase in ADAPTIVE_PHASES:
        run_case("cuda", phase, opts, dtype, sizes, 4, 256.0, bool(misaligned), zlib.crc32(f"{case}{phase}".encode()))
