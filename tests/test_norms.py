"""norms.squares, the per-tensor sums of squares behind LARS's trust ratios and LAMB's clipping: the CPU
extension's operator (torch.ops.extrap_kernels.squares) against a float64 sum at many shapes and dtypes,
with a bound derived from how it adds; torch's _foreach_norm elsewhere, which it must agree with."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS, DTYPES
from hypothesis import given
from hypothesis import strategies as st

import extrap_kernels as ek
from extrap_kernels import norms
from extrap_kernels.bucket import state_dtype

pytestmark = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="extension not built")
CHUNK, LANES = 1 << 16, 16  # csrc/cpu: elements of a span, independent sums in a span


def squares_bound(dtype: torch.dtype, exact: torch.Tensor) -> torch.Tensor:
    """Each element's square is exact or one rounding in the accumulation type; a lane adds at most
    CHUNK / LANES of them, the lanes are then added in turn (in that type), the spans in float64."""
    eps = torch.finfo(state_dtype(dtype)).eps
    return (CHUNK // LANES + LANES + 1) * eps * exact + torch.finfo(torch.float64).tiny


@given(
    dtype=st.sampled_from(DTYPES),
    sizes=st.lists(
        st.sampled_from([0, 1, 2, 15, 16, 17, 1000, CHUNK - 1, CHUNK + 3, 3 * CHUNK + 17]), min_size=1, max_size=5
    ),
    scale=st.sampled_from([1e-3, 1.0, 300.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_squares_against_float64(dtype, sizes, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = [(torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype) for n in sizes]
    got = torch.ops.extrap_kernels.squares(tensors)
    exact = torch.stack([t.double().square().sum() for t in tensors])
    assert got.dtype == torch.float64 and got.shape == (len(sizes),)
    err = (got - exact).abs()
    assert (err <= squares_bound(dtype, exact)).all(), (err, exact)


def test_squares_of_strided_tensors_and_mixed_dtypes():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(300, 700, generator=gen)
    tensors = [t.t(), t[:, ::3], t.bfloat16(), t.double()[5]]
    got = torch.ops.extrap_kernels.squares(tensors)
    exact = torch.stack([x.double().square().sum() for x in tensors])
    assert (got - exact).abs().le(squares_bound(torch.bfloat16, exact)).all()
    # the control: each tensor's own sum, in the order given
    assert not torch.allclose(got, got.flip(0))


def test_squares_refuses_what_it_cannot_add():
    ek._ext.load()
    with pytest.raises(ValueError, match="floating-point"):
        torch.ops.extrap_kernels.squares([torch.ones(3), torch.ones(3, dtype=torch.int32)])
    with pytest.raises(NotImplementedError, match="SparseCPU"):  # the dispatcher's refusal: no sparse kernel
        torch.ops.extrap_kernels.squares([torch.ones(3).to_sparse()])
    meta = torch.ops.extrap_kernels.squares([torch.empty(4, device="meta"), torch.empty(0, device="meta")])
    assert meta.device.type == "meta" and meta.shape == (2,) and meta.dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_extension_and_foreach_norm_agree(dtype, monkeypatch):
    """norms.squares takes the operator on CPU and torch's _foreach_norm where it is not there (as on a GPU)."""
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(n, generator=gen).to(dtype) for n in (1, 17, CHUNK + 3)]
    ours, ours_norms = norms.squares(tensors, state_dtype(dtype)), norms.two_norms(tensors, state_dtype(dtype))
    monkeypatch.setattr(norms, "_cpu_squares", lambda: None)
    theirs, their_norms = norms.squares(tensors, state_dtype(dtype)), norms.two_norms(tensors, state_dtype(dtype))
    exact = torch.stack([t.double().square().sum() for t in tensors])
    bound = 2 * squares_bound(dtype, exact)  # each within its own accumulation's bound
    assert (ours - theirs).abs().le(bound).all() and (theirs - exact).abs().le(bound).all()
    # the norms in the state dtype: within the same bound (|a - b| <= |a^2 - b^2| / (a + b)) and its rounding
    assert ours_norms.dtype == their_norms.dtype == state_dtype(dtype)
    norm_bound = bound / (2 * exact.sqrt()) + 2 * torch.finfo(state_dtype(dtype)).eps * exact.sqrt()
    assert (ours_norms.double() - their_norms.double()).abs().le(norm_bound).all()
