"""Stochastic rounding of 16-bit state without an fp32 master (SPEC "Memory-lean variants"), in torch
integer ops on any device: csrc/extrap_math.h's `stochastic_round` and `rounding_bits`, element for element.

A value computed in fp32 goes to one of its two neighbours in bf16/fp16, the one away from zero with
probability equal to the fraction of the gap, so that updates smaller than the 16-bit spacing are not lost
on average. The random bits are the noise generator's (philox.py) under a key of their own: Philox output
c0 rounds the anchor, c1 the momentum buffer, c2 the parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import philox

ROUNDING_KEY = 0x243F6A8885A308D3  # XORed into the seed: bits apart from the noise mode's
# the adaptive bases' 16-bit moments (exp_avg_dtype): bits apart from the noise's and the parameter's; Philox output
# c0 rounds m, c1 v (csrc/extrap_math.h's kMomentKey)
MOMENT_KEY = 0x13198A2E03707344
_TWO_POW_24 = 16777216.0


def bits_flat(
    seed: int, steps: Tensor, indices: Tensor, numels: list[int], device, key: int = ROUNDING_KEY
) -> tuple[Tensor, Tensor, Tensor]:
    """(c0, c1, c2) for the elements of many tensors, concatenated (int64 tensors holding uint32), under `key`
    (the parameter's rounding, or MOMENT_KEY)."""
    return philox.bits_flat((int(seed) & 0xFFFFFFFFFFFFFFFF) ^ key, steps, indices, numels, device)[:3]


def stochastic_round(value: Tensor, dtype: torch.dtype, random: Tensor) -> Tensor:
    """`value` (rounded to fp32 first) to `dtype` (bf16 or fp16), with `random` (uint32 in int64) per element."""
    v = value.to(torch.float32).contiguous()
    u = v.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    exponent = (u >> 23) & 0xFF
    if dtype == torch.bfloat16:
        drop = torch.full_like(u, 16)
    elif dtype == torch.float16:
        drop = 13 + torch.clamp_min(113 - exponent, 0)
    else:
        raise ValueError(f"stochastic rounding is for bf16 and fp16, not {dtype}")
    mask = (torch.ones_like(u) << torch.clamp_max(drop, 23)) - 1
    rounded = ((u + (random & mask)) & ~mask) & 0xFFFFFFFF
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded).to(torch.int32).view(torch.float32)
    # fp16 below 2^-24: 0 or 2^-24, the latter with probability |v| / 2^-24 (to 2^-24)
    uniform = (random >> 8).to(torch.float32) * (1.0 / _TWO_POW_24)
    tiny = torch.where(uniform < v.abs() * _TWO_POW_24, 1.0 / _TWO_POW_24, 0.0).to(torch.float32).copysign(v)
    out = torch.where(drop > 23, tiny, rounded)
    return torch.where(exponent == 0xFF, v, out).to(dtype)


def round_moments(bucket, i: int, seed: int, m: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """An update's first and second moments of parameter `i` of `bucket`, computed at full precision, as the bucket
    stores them: rounded stochastically to its 16-bit moment dtype (Philox c0 m, c1 v under MOMENT_KEY, keyed by the
    update's count), or unchanged where the moments are full precision. The direction is then taken from these."""
    if not bucket.rounds_moments:
        return m, v
    x = bucket.params[i]
    index = torch.tensor([bucket.indices[i]])
    bits = bits_flat(seed, bucket.steps[i].reshape(1), index, [x.numel()], x.device, MOMENT_KEY)
    dtype = bucket.moment_dtype
    return tuple(stochastic_round(t.reshape(-1), dtype, bits[k]).view_as(t) for k, t in enumerate((m, v)))


def store(bucket, i: int, seed: int):
    """put(dst, value, which) for parameter `i` of `bucket` (bucket.Bucket): dst <- value, rounded to nearest;
    or, for 16-bit values without a master, stochastically with Philox output `which` (0: the anchor, 1: the
    momentum, 2: the parameter). The oracles' way of storing (reference.py, reference_adaptive.py)."""
    if not bucket.rounds_stochastically:
        return lambda dst, value, which: dst.copy_(value)
    x = bucket.params[i]
    bits = bits_flat(seed, bucket.steps[i].reshape(1), torch.tensor([bucket.indices[i]]), [x.numel()], x.device)

    def put(dst: Tensor, value: Tensor, which: int) -> None:
        dst.copy_(stochastic_round(value.reshape(-1), dst.dtype, bits[which]).view_as(dst))

    return put
