"""Mode "noise" draws the same numbers on every backend (SPEC): the Philox integers exactly, the
normals to the float32 rounding of log and cos."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import over_backends
from hypothesis import given
from hypothesis import strategies as st

import extrap_kernels as ek
from extrap_kernels import _ext, philox

needs_ext = pytest.mark.skipif(_ext.load() is None, reason="extension not built")
NORMAL_ATOL = 5.7 * 4 * torch.finfo(torch.float32).eps  # see conftest.noise_tolerance


@needs_ext
@given(
    seed=st.integers(0, 2**64 - 1),
    step=st.integers(0, 2**32 - 1),
    index=st.integers(0, 2**32 - 1),
    numel=st.integers(0, 300),
)
def test_header_generator_matches_torch_generator(seed, step, index, numel):
    signed_seed = seed - 2**64 if seed >= 2**63 else seed  # the same 64 bits as an int64
    bits, normal = _ext.load().noise(signed_seed, step, index, numel)
    ours = philox.noise_bits(seed, torch.tensor(step), torch.tensor(index), torch.arange(numel))
    assert torch.equal(bits, torch.stack(ours, 1).reshape(numel, 4))
    torch.testing.assert_close(normal, philox.normal(seed, step, index, numel), atol=NORMAL_ATOL, rtol=0)


def test_known_philox_vector():
    """Philox4x32-10 known-answer test (Random123 kat_vectors: counter and key all ones)."""
    c = [torch.tensor([0xFFFFFFFF], dtype=torch.int64)] * 4
    out = philox.philox4x32_10(*c, seed=0xFFFFFFFFFFFFFFFF)
    assert [int(t) for t in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    zeros = [torch.tensor([0], dtype=torch.int64)] * 4
    assert [int(t) for t in philox.philox4x32_10(*zeros, seed=0)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_normals_are_standard_normal():
    z = philox.normal(1234, 1, 0, 200_000)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


def test_flat_generator_equals_per_parameter_generator():
    numels = [0, 5, 1, 70_000]
    flat = philox.normal_flat(9, torch.tensor([3.0, 3.0, 4.0, 5.0]), torch.tensor([0, 1, 2, 7]), numels, "cpu")
    parts = torch.split(flat, numels)
    for n, s, i, part in zip(numels, [3, 3, 4, 5], [0, 1, 2, 7], parts):
        assert torch.equal(part, philox.normal(9, s, i, n))


def test_matches_triton_randn():
    """Parameter 0 at step 0 draws exactly tl.randn(seed, offset) (the interpreter on CPU)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def randn_kernel(out, seed, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out + offsets, tl.randn(seed, offsets), mask=offsets < n)

    out = torch.empty(1000)
    randn_kernel[(8,)](out, 4242, 1000, BLOCK=128)
    torch.testing.assert_close(out, philox.normal(4242, 0, 0, 1000), atol=NORMAL_ATOL, rtol=0)


@over_backends
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_mode_perturbs_around_the_anchor(backend, dtype):
    """x = s + sigma * xi after each step, with the reference's xi for (seed, step, index)."""
    params = [torch.nn.Parameter(torch.randn(n, dtype=dtype)) for n in (7, 65539)]
    opt = ek.ExtrapSGD(params, lr=0.1, mode="noise", noise_std=0.5, seed=77, backend=backend)
    for step in range(1, 4):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        for index, p in enumerate(params):
            xi = philox.normal(77, step, index, p.numel()).to(dtype)
            expected = opt.state[p]["anchor"] + 0.5 * xi
            torch.testing.assert_close(p.detach(), expected, atol=0.5 * NORMAL_ATOL + 1e-6, rtol=0)
