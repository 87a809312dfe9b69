"""The noise of mode "noise", in torch integer ops on any device (SPEC: one definition for every backend).

Philox4x32-10 and Box-Muller exactly as Triton's `tl.randn` computes them, with the counter
(element index lo, element index hi, parameter index, step) and the key (seed lo, seed hi).
csrc/extrap_math.h is the same generator for the C++/CUDA kernels; tests check they agree bit for bit
on the integers. Unsigned 32-bit arithmetic is done in int64 with 16-bit halves, so nothing overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_UNIFORM_SCALE = 4.6566127342e-10  # Triton's uint_to_uniform_float for 32 bits
_TWO_PI = 6.283185307179586


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of the 64-bit product of the constant a and b (int64 holding uint32)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    middle = a_hi * b_lo + a_lo * b_hi  # < 2**33
    hi = a_hi * b_hi + (((middle << 16) + a_lo * b_lo) >> 32)
    lo = (a_lo * b + (((a_hi * b) & 0xFFFF) << 16)) & _MASK32
    return hi & _MASK32, lo


def philox4x32_10(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, seed: int) -> tuple[Tensor, ...]:
    """Ten Philox rounds on int64 tensors holding uint32 counters."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def noise_bits(seed: int, step: Tensor, index: Tensor, element: Tensor) -> tuple[Tensor, ...]:
    """The four Philox outputs for each element (int64 tensors, broadcast together)."""
    element = element.to(torch.int64)
    c0 = element & _MASK32
    c1 = (element >> 32) & _MASK32
    c2 = torch.as_tensor(index, dtype=torch.int64, device=element.device).expand_as(element) & _MASK32
    c3 = torch.as_tensor(step, dtype=torch.int64, device=element.device).expand_as(element) & _MASK32
    return philox4x32_10(c0, c1, c2, c3, int(seed) & 0xFFFFFFFFFFFFFFFF)


def uniform_from_bits(bits: Tensor) -> Tensor:
    """uint32 -> float32 in [0, 1): the int32 reading, negatives folded by bitwise not, times a scale."""
    folded = torch.where(bits >= 2**31, _MASK32 - bits, bits)
    return folded.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def box_muller(u1: Tensor, u2: Tensor) -> Tensor:
    u1 = torch.clamp_min(u1, 1.0e-7)
    theta = torch.tensor(_TWO_PI, dtype=torch.float32) * u2
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


def bits_flat(seed: int, steps: Tensor, indices: Tensor, numels: list[int], device) -> tuple[Tensor, ...]:
    """The Philox outputs of many parameters' elements at once, concatenated: parameter i contributes
    numels[i] counters (element 0..numels[i]-1, indices[i], steps[i]). One vectorized pass, no loop."""
    sizes = torch.tensor(numels, dtype=torch.int64, device=device)
    total = int(sum(numels))
    offsets = torch.cumsum(sizes, 0) - sizes
    owner = torch.repeat_interleave(torch.arange(len(numels), device=device), sizes, output_size=total)
    element = torch.arange(total, dtype=torch.int64, device=device) - offsets[owner]
    steps = steps.to(device=device, dtype=torch.int64)[owner]
    indices = indices.to(device=device, dtype=torch.int64)[owner]
    return noise_bits(seed, steps, indices, element)


def normal_flat(seed: int, steps: Tensor, indices: Tensor, numels: list[int], device) -> Tensor:
    """The float32 normals of many parameters at once, concatenated (as bits_flat)."""
    c0, c1, _, _ = bits_flat(seed, steps, indices, numels, device)
    return box_muller(uniform_from_bits(c0), uniform_from_bits(c1))


def normal(seed: int, step: int, index: int, numel: int, device=None) -> Tensor:
    """The float32 normals of one parameter of `numel` elements."""
    element = torch.arange(numel, dtype=torch.int64, device=device)
    c0, c1, _, _ = noise_bits(seed, torch.tensor(step), torch.tensor(index), element)
    return box_muller(uniform_from_bits(c0), uniform_from_bits(c1))
