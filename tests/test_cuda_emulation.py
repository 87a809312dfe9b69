"""The CUDA launcher and kernels (csrc/cuda) in their host emulation (csrc/emulation): the `cuda` backend on
CPU tensors. The hypothesis suites of the other test files run it like every CPU backend; this file
checks that it is there, and the launcher's boundaries, which the emulation's small limits
(extrap_kernels/_ext.py, EMULATION_LIMITS) put within reach of small tensors: a table with more tensors
than it holds, a tensor split across launches, a launch filled exactly, vector tails and misaligned
tensors (the scalar path), with found_inf and tensor rates."""
from __future__ import annotations

import zlib

import pytest
import torch

import extrap_kernels as ek
from extrap_kernels import reference
from extrap_kernels.bucket import Hyper, Phase, state_dtype

from conftest import (CPU_BACKENDS, assert_within, misaligned_copy, noise_tolerance, output_ulp, phase_bucket,
                      trajectory_tolerance)

LIMITS = ek._ext.EMULATION_LIMITS
CHUNK, BLOCKS, TENSORS = LIMITS["EXTRAP_CHUNK_SIZE"], LIMITS["EXTRAP_TABLE_BLOCKS"], LIMITS["EXTRAP_TABLE_TENSORS"]
LAUNCH = CHUNK * BLOCKS  # elements one launch covers at most

pytestmark = pytest.mark.skipif(not ek._ext.cuda_emulation_requested(), reason="EXTRAP_CUDA_EMULATION is not 1")

# name -> (sizes, which of them start misaligned: a storage offset of one element)
CASES = {
    "more-tensors-than-a-table": ([1, 5, 0, 3, 7, 2, 9, 0, 4], ()),
    "tensor-across-launches": ([2 * LAUNCH + CHUNK + 3], ()),
    "launch-filled-exactly": ([LAUNCH, LAUNCH - CHUNK, CHUNK], ()),
    # the table's last entry takes the launch's last block at its own last chunk: both limits at once
    "last-entry-and-last-block": ([CHUNK] * (TENSORS - 1) + [(BLOCKS - TENSORS + 1) * CHUNK, 5], ()),
    # the last entry's chunks run past the launch: it continues as entry 0 of the next table
    "last-entry-continues": ([CHUNK] * (TENSORS - 1) + [(BLOCKS + 2) * CHUNK + 1, 3], ()),
    "vector-tails": ([CHUNK - 1, CHUNK + 7, 2 * CHUNK + 5, 3], ()),
    "misaligned": ([CHUNK + 9, 2 * CHUNK, 17, LAUNCH + 3], (0, 3)),
}


def test_the_emulation_is_built():
    """Requested (conftest asks for it), it must build: a broken build would silently drop the device
    code from every backend test."""
    assert "cuda" in CPU_BACKENDS, getattr(ek._ext.load_cuda_emulation, "error", "")
    ext = ek._ext.load_cuda_emulation()
    assert ext.emulates_cuda and ext.ops_namespace == "extrap_kernels_cuda_emulation"
    assert not ek._ext.load().emulates_cuda  # the extension itself runs the CPU kernel on CPU tensors
    assert ek.backends.resolve("auto", torch.device("cpu")).name == "cpu"  # never chosen by "auto"


def test_the_cases_reach_the_boundaries():
    """Each boundary case crosses what its name says (so a change of the limits cannot quietly void them)."""
    sizes = CASES["more-tensors-than-a-table"][0]
    assert sum(n > 0 for n in sizes) > 2 * TENSORS
    assert CASES["tensor-across-launches"][0][0] > 2 * LAUNCH
    tail = CASES["last-entry-and-last-block"][0]
    assert (TENSORS - 1) + tail[TENSORS - 1] // CHUNK == BLOCKS
    assert (TENSORS - 1) + -(-CASES["last-entry-continues"][0][TENSORS - 1] // CHUNK) > BLOCKS
    assert any(n % 8 for n in CASES["vector-tails"][0])


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


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name.lower())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("variant", ["plain", "no-momentum", "tensor-rates", "grad-scale"])
def test_launch_boundaries_against_reference(case, phase, dtype, variant):
    anchor_free = phase == Phase.UPDATE_PAST_ANCHOR_FREE
    if anchor_free and (dtype not in (torch.float32, torch.float64) or variant == "no-momentum"):
        pytest.skip("the anchor-free update runs with momentum on full-precision parameters only")
    sizes, misaligned = CASES[case]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case} {phase} {dtype} {variant}".encode()))
    momentum = 0.0 if variant == "no-momentum" else 0.9
    lr, gamma = 0.1, 0.05
    if variant == "tensor-rates":
        lr, gamma = torch.tensor(0.1), torch.tensor(0.05)
    hyper = Hyper(lr=lr, gamma=gamma, momentum=momentum, weight_decay=1e-3, noise_std=0.01, seed=11)
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
    if anchor_free:
        assert [float(t) for t in ours.last_gammas] == [float(t) for t in oracle.last_gammas]


@pytest.mark.parametrize("case", ["more-tensors-than-a-table", "tensor-across-launches", "misaligned"])
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name.lower())
def test_found_inf_writes_what_the_reference_writes(case, phase):
    """A skipped launch (found_inf set, shape [1] as GradScaler makes it) leaves what the reference leaves,
    bit for bit, and counts no step."""
    sizes, misaligned = CASES[case]
    gen = torch.Generator().manual_seed(int(phase))
    x, g, s, m, last = _inputs(sizes, torch.float32, gen, 0.9)
    g[0][:1] = float("inf") if g[0].numel() else 0.0
    hyper = Hyper(lr=0.1, gamma=0.05, momentum=0.9)
    found_inf = torch.tensor([1.0])
    ours, oracle = _buckets(phase, sizes, misaligned, x, g, s, m, last)
    ek.backends.resolve("cuda", torch.device("cpu")).apply(phase, ours, hyper, None, found_inf)
    reference.apply(phase, oracle, hyper, None, found_inf)
    for name in ("params", "anchors", "momenta", "steps", "last_gammas"):
        for i, (a, b) in enumerate(zip(getattr(ours, name), getattr(oracle, name))):
            assert torch.equal(a, b), f"{name} {i}"
