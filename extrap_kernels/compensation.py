"""The compensated anchor (master_weights="compensated"; Transformer Engine's store_param_remainders=True for the
drop-ins; docs/SPEC.md "The compensated anchor"): a bf16 parameter keeps, instead of a 4-byte fp32 master, the
16 low bits of its fp32 value, "param_remainder" (int16). The fp32 x is the bf16 x's bits over the remainder's, so
it comes back exactly: the step runs on it as on an fp32 parameter, and stores the new fp32 x split again. Where
x is its own anchor (gamma = 0, the drop-ins) that fp32 x is the master bit for bit; with extrapolation the
anchor-free past update recovers the anchor from it as from an fp32 parameter, so the trajectory is the fp32
parameter's, bit for bit.

The split rounds the fp32 value half up (away from zero) at the 16th bit, as Transformer Engine does: the
remainder is then the low half as a signed number, negative exactly where the high half was carried up, which
the join undoes. The bf16 x differs from the nearest rounding of the fp32 value only at an exact tie. The fused
kernels split and join the same way (triton_common.joined and store_split; csrc/extrap_math.h's joined_value and
split_value)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .bucket import Phase

KEY = "param_remainder"


def split(full: Tensor) -> tuple[Tensor, Tensor]:
    """(x, remainder): the bf16 value of the fp32 `full`, rounded half up at the 16th bit, and the int16 low half.
    An inf or nan is x itself with remainder 0 (a carry would turn a nan with high low bits, CUDA's canonical
    0x7FFFFFFF among them, into -0: the model must see the nan)."""
    bits = full.contiguous().view(torch.int32)
    finite = torch.bitwise_and(bits, 0x7F800000) != 0x7F800000
    low = torch.where(finite, torch.bitwise_and(bits, 0xFFFF), 0)
    high = torch.bitwise_right_shift(bits, 16) + (low >= 0x8000).to(torch.int32)  # (the carry, into the exponent too)
    x = torch.where(finite, high.to(torch.int16).view(torch.bfloat16), full.to(torch.bfloat16))
    return x.view_as(full), (low - torch.where(low >= 0x8000, 0x10000, 0)).to(torch.int16).view_as(full)


def join(x: Tensor, remainder: Tensor) -> Tensor:
    """The fp32 value that split() made `x` and `remainder` of, exactly."""
    high = x.contiguous().view(torch.int16).to(torch.int32) - (remainder < 0).to(torch.int32)
    low = torch.bitwise_and(remainder.to(torch.int32), 0xFFFF)
    return torch.bitwise_or(torch.bitwise_left_shift(high, 16), low).view(torch.float32).view_as(x)


def compensated(group: dict, dtype: torch.dtype) -> bool:
    """The group keeps its `dtype` parameters' fp32 values as remainders (full-precision ones need none)."""
    return group.get("master_weights", True) == "compensated" and dtype in (torch.bfloat16, torch.float16)


# The backends that step a compensated bucket: the fused ones join and split x in the kernel (the anchor's row holds
# the remainders: the Triton kernels' S_DTYPE int16, csrc/launch.h's compensated), the host ones run over the joined
# fp32 values (ON_FULL: calls.ApplyCall).
ON_FULL = ("foreach", "reference")


def check(group: dict, phase, dtype: torch.dtype, name: str) -> None:
    """Refuses, before anything is written, a compensated bucket that cannot rebuild its anchor from x: an fp16 x
    (not the high half of an fp32 value), or a phase with a separate anchor (mode "local" or "noise", or
    store_anchor=True)."""
    if dtype != torch.bfloat16:
        raise ValueError(
            f"{name}: master_weights='compensated' needs bf16 parameters (an fp16 x is not the high half "
            f"of its fp32 value), got {dtype}; use master_weights=True"
        )
    anchored = group.get("mode") in ("local", "noise") or group.get("store_anchor", False)
    if anchored or phase not in (Phase.UPDATE, Phase.UPDATE_PAST_ANCHOR_FREE):
        raise ValueError(
            f"{name}: master_weights='compensated' keeps the anchor in x itself: it runs the anchor-free past mode "
            "(mode='past', store_anchor=False; heavy-ball momentum or the Adam family) and Apex's drop-ins, not "
            f"mode={group.get('mode')!r} with store_anchor={group.get('store_anchor', False)}; use master_weights=True"
        )


def remainders_as_master(store_param_remainders: bool, master_weights: bool) -> bool | str:
    """Transformer Engine's store_param_remainders=True (with master_weights=True, as it requires): the fp32 master
    of a bf16 parameter held as its 16 low bits, master_weights="compensated" (compensation.py)."""
    if not store_param_remainders:
        return master_weights
    if master_weights is not True:
        raise ValueError(
            "store_param_remainders=True stores the fp32 master as remainders: it needs master_weights=True"
        )
    return "compensated"


def apply_on_full(apply, phase, b, h, grad_scale, found_inf) -> None:
    """`apply` (a host backend's phase: foreach's, the reference's) over the fp32 values of a compensated bucket,
    which it steps as fp32 parameters that are their own anchors; the results split back into x and the
    remainders. The gradients stay the bucket's (the backends read them in their arithmetic's dtype, and an AMP
    step unscales them in place)."""
    full = [join(x, r) for x, r in zip(b.params, b.remainders)]
    apply(phase, replace(b, params=full, anchors=full, remainders=[]), h, grad_scale, found_inf)
    for x, r, value in zip(b.params, b.remainders, full):
        high, low = split(value)
        x.copy_(high)
        r.copy_(low)
