"""What the `triton` backend's kernels share: the block of a program, the cached device tables of tensor
addresses, the noise and the stochastic rounding (csrc/extrap_math.h's, line for line), the launch's
per-step values, and the phases as the kernels' constexprs. triton_sgd.py (the SGD family) and
triton_adaptive.py (Adam, AdamW, LAMB) build on it; triton_kernels.py is the backend.

Every program handles one BLOCK of one tensor: a device table of tensor addresses (one row per tensor list,
one column per tensor) and a block map (program -> tensor, first element) are built once and cached until
a parameter, gradient or state tensor is reallocated. On a machine without a GPU the kernels run on CPU
tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from .. import rounding
from ..bucket import Bucket, Phase

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Interpreted programs cost per program, not per element: fewer, larger blocks there.
BLOCK = 1 << 14 if INTERPRETED else 2048
DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
# The kernels' ROUNDING constexpr for 16-bit values without a master (0: to nearest): stochastic_round's.
ROUNDING_MODES = {torch.bfloat16: 1, torch.float16: 2}

# The phases (bucket.Phase), as the kernels compare their PHASE constexpr with them.
EXTRAPOLATE = tl.constexpr(int(Phase.EXTRAPOLATE))
UPDATE = tl.constexpr(int(Phase.UPDATE))
UPDATE_PAST = tl.constexpr(int(Phase.UPDATE_PAST))
UPDATE_NOISE = tl.constexpr(int(Phase.UPDATE_NOISE))
UPDATE_PAST_ANCHOR_FREE = tl.constexpr(int(Phase.UPDATE_PAST_ANCHOR_FREE))
# The keys the kernels XOR into the one seed they take (rounding.py): the rounding's bits apart from the noise's.
ROUNDING_KEY = tl.constexpr(rounding.ROUNDING_KEY)
MOMENT_KEY = tl.constexpr(rounding.MOMENT_KEY)


# ---- the noise and the rounding: csrc/extrap_math.h, line for line ----------------------------------
@triton.jit
def philox_at(seed, step, index, element):
    """Philox4x32-10 at counter (element lo, element hi, index, step), key seed: its four outputs."""
    c0 = (element & 0xFFFFFFFF).to(tl.uint32)
    c1 = (element >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + index.to(tl.uint32)
    c3 = tl.zeros_like(c0) + step.to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def noise_normal(seed, step, index, element):
    """The noise: Box-Muller of the first two Philox outputs."""
    r0, r1, _, _ = philox_at(seed, step, index, element)
    n0, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1))
    return n0


@triton.jit
def stochastic_round(v, random, ROUNDING: tl.constexpr):
    """csrc/extrap_math.h's stochastic_round: v (fp32) to the fp32 value of a bf16 (ROUNDING 1) or fp16
    (2) neighbour, away from zero with probability equal to the fraction of the gap; 0: v itself."""
    out = v
    if ROUNDING != 0:  # (one return at the end: a constexpr-false branch is never compiled)
        u = v.to(tl.uint32, bitcast=True)
        exponent = (u >> 23) & 0xFF
        if ROUNDING == 1:
            drop = tl.full(u.shape, 16, tl.uint32)
        else:
            drop = 13 + tl.where(exponent < 113, 113 - exponent, 0)
        mask = (tl.full(u.shape, 1, tl.uint32) << tl.minimum(drop, 23)) - 1
        # (the low bits cleared as t - (t & mask), not t & ~mask: triton 3.6 and 3.7's interpreter cannot
        # invert an unsigned tensor under numpy 2)
        carried = u + (random & mask)
        rounded = (carried - (carried & mask)).to(tl.float32, bitcast=True)
        if ROUNDING == 2:  # below 2^-24: 0 or 2^-24, the latter with probability |v| / 2^-24
            uniform = (random >> 8).to(tl.float32) * 5.9604644775390625e-8
            tiny = tl.where(uniform < tl.abs(v) * 16777216.0, 5.9604644775390625e-8, 0.0)
            tiny = tl.where(v < 0, -tiny, tiny)
            rounded = tl.where(drop > 23, tiny, rounded)
        out = tl.where(exponent == 0xFF, v, rounded)
    return out


@triton.jit
def rounding_bits(seed, step, index, element, KEY: tl.constexpr):
    """The stochastic rounding's bits: the noise's counter under the key seed ^ KEY (ROUNDING_KEY, or MOMENT_KEY for
    16-bit moments); (c0, c1, c2). (The seed is any integer type: a small one comes as int32.)"""
    r0, r1, r2, _ = philox_at(tl.full((), KEY, tl.uint64) ^ seed, step, index, element)
    return r0, r1, r2


@triton.jit
def block_rounding_bits(seed, step_ptr, index, offs, ROUNDING: tl.constexpr):
    """The block's rounding bits for s, m and x (zeros where nothing is rounded stochastically)."""
    zeros = tl.zeros_like(offs).to(tl.uint32)
    r_s, r_m, r_x = zeros, zeros, zeros
    if ROUNDING != 0:
        r_s, r_m, r_x = rounding_bits(seed, tl.load(step_ptr).to(tl.int64), index, offs, ROUNDING_KEY)
    return r_s, r_m, r_x


# ---- the launch -----------------------------------------------------------------------------------
@triton.jit
def abandon_block(
    x_ptr, s_ptr, offs, mask, PHASE: tl.constexpr, X_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, MASTER: tl.constexpr
):
    """found_inf: only keep x consistent with the abandoned iteration (bucket.abandon): the snapshot is still
    taken, and the local step's x returns to its anchor."""
    if PHASE == EXTRAPOLATE:
        if not MASTER:
            tl.store(s_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(S_DTYPE), mask=mask)
    elif PHASE == UPDATE and S_DTYPE != tl.int16:  # (a compensated x is its own anchor: nothing moves)
        tl.store(x_ptr + offs, tl.load(s_ptr + offs, mask=mask).to(X_DTYPE), mask=mask)


@triton.jit
def joined(x_ptr, remainder_ptr, offs, mask):
    """The fp32 values of bf16 x over their int16 remainders (extrap_kernels/compensation.py's join)."""
    high = tl.load(x_ptr + offs, mask=mask).to(tl.int16, bitcast=True).to(tl.int32)
    remainder = tl.load(remainder_ptr + offs, mask=mask).to(tl.int32)
    high = high - (remainder < 0).to(tl.int32)
    return ((high << 16) | (remainder & 0xFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def store_split(x_ptr, remainder_ptr, offs, mask, value):
    """fp32 `value` stored as its bf16 x, rounded half up at the 16th bit, and its int16 low half (compensation.py's
    split: an inf or nan as x itself over remainder 0)."""
    bits = value.to(tl.float32).to(tl.int32, bitcast=True)
    finite = (bits & 0x7F800000) != 0x7F800000
    low = tl.where(finite, bits & 0xFFFF, 0)
    high = (bits >> 16) + (low >= 0x8000).to(tl.int32)
    x = tl.where(finite, high.to(tl.int16).to(tl.bfloat16, bitcast=True), value.to(tl.bfloat16))
    tl.store(x_ptr + offs, x, mask=mask)
    tl.store(remainder_ptr + offs, (low - tl.where(low >= 0x8000, 0x10000, 0)).to(tl.int16), mask=mask)


@triton.jit
def load_value(ptr, x_ptr, s_ptr, offs, mask, S_DTYPE: tl.constexpr, C_DTYPE: tl.constexpr):
    """The values at `ptr` (x's or the anchor's) in C_DTYPE; with a compensated anchor (S_DTYPE int16: the s row
    holds x's remainders, x its own anchor) x's fp32 value, whichever is asked for."""
    if S_DTYPE == tl.int16:
        value = joined(x_ptr, s_ptr, offs, mask)
    else:
        value = tl.load(ptr + offs, mask=mask).to(C_DTYPE)
    return value


@triton.jit
def store_param(x_ptr, s_ptr, offs, mask, value, S_DTYPE: tl.constexpr, X_DTYPE: tl.constexpr):
    """x <- value: split over its remainder where S_DTYPE is int16, else converted to X_DTYPE."""
    if S_DTYPE == tl.int16:
        store_split(x_ptr, s_ptr, offs, mask, value)
    else:
        tl.store(x_ptr + offs, value.to(X_DTYPE), mask=mask)


@triton.jit
def found_inf_skips(found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """Whether AMP's found_inf abandons this step (read on the device: no host synchronization)."""
    skip = False
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr) != 0
    return skip


@triton.jit
def launch_rates(lr, gamma, lr_ptr, gamma_ptr, LR_TENSOR: tl.constexpr, GAMMA_TENSOR: tl.constexpr):
    """(lr, gamma) as the kernel runs: capturable rates are read now, so that a CUDA graph replays their values."""
    if LR_TENSOR:
        lr = tl.load(lr_ptr)
    if GAMMA_TENSOR:
        gamma = tl.load(gamma_ptr)
    return lr, gamma


@triton.jit
def grad_scaling(
    sign, scale_ptr, trust_ptr, t, HAS_SCALE: tl.constexpr, HAS_TRUST: tl.constexpr, C_DTYPE: tl.constexpr
):
    """(grad_factor, trust): 1 / grad_scale with the sign of maximize, and tensor t's trust ratio (1 without)."""
    grad_factor = sign
    if HAS_SCALE:
        grad_factor = sign / tl.load(scale_ptr).to(C_DTYPE)
    trust = 1.0
    if HAS_TRUST:
        trust = tl.load(trust_ptr + t)
    return grad_factor, trust


@triton.jit
def grad_unscale(loss_scale_ptr, UNSCALES: tl.constexpr, C_DTYPE: tl.constexpr):
    """1 / loss_scale, the factor AMP's gradients are written back with (torch's fused optimizers leave them
    unscaled), where the launch has its loss scale (UNSCALES); else 1, and nothing is written."""
    unscale = 1.0
    if UNSCALES:
        unscale = 1.0 / tl.load(loss_scale_ptr).to(C_DTYPE)
    return unscale


@triton.jit
def row_pointer(table, t, ROWS: tl.constexpr, ROW: tl.constexpr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Row ROW of tensor t's column of the table, as a pointer to DTYPE. ALIGNED (the array starts on 16 bytes,
    checked on the host) is said to the compiler on the cast itself: it does not follow a hint on the integer
    address through the cast, and Triton's inliner drops one placed on a helper's call (triton 3.6 and 3.7 then
    compile scalar accesses)."""
    ptr = tl.load(table + t * ROWS + ROW).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def program_block(numels, block_tensor, block_start, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """This program's block: its tensor t (a column of the table), its element offsets, their mask, and whether
    it is whole. Only an ALIGNED bucket has whole blocks, so said to the compiler: its blocks start on a
    multiple of BLOCK, and a whole one is run without a mask, which would split the vectors."""
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    numel = tl.load(numels + t)
    start = tl.load(block_start + pid)
    if ALIGNED:
        start = tl.multiple_of(start, BLOCK)
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    whole = False
    if ALIGNED:
        whole = start + BLOCK <= numel
    return t, offs, offs < numel, whole


# A kernel calls its block function once, in a two-pass `tl.static_range(2)` loop over WHOLE: the run-time test
# `whole == (WHOLE == 1)` runs one pass, and the compiler sees the whole-block pass without a mask (a mask
# would split the 16-byte vectors) and the other with it. Without ALIGNED, `whole` is False and the first pass
# is not compiled.


# ---- tables, cached -------------------------------------------------------------------------------
_TABLES: OrderedDict = OrderedDict()
_MAX_TABLES = 64


def anchor_dtype(b: Bucket):
    """The dtype of the table's anchor row: the stored anchor's, or int16 where the row holds a compensated
    bucket's remainders (x its own anchor: extrap_kernels/compensation.py)."""
    return tl.int16 if b.remainders else DTYPES[b.storage_dtype]


def cached_tables(b: Bucket, columns: tuple, streamed: int = 4):
    """(address table, numels, indices, block->tensor, block->first element, tensor->first block (one more
    entry: the total), number of blocks, whether every tensor of the first `streamed` columns starts on 16
    bytes). `columns`: the tensor lists whose addresses the table holds (a base family's rows), each
    a row of one address per tensor."""
    key = (b.device, tuple(t.data_ptr() for column in columns for t in column), tuple(b.indices))
    cached = _TABLES.get(key)
    if cached is not None:
        _TABLES.move_to_end(key)
        return cached
    addresses = torch.tensor([[t.data_ptr() for t in column] for column in columns], dtype=torch.int64)
    aligned = bool((addresses[:streamed] % 16 == 0).all())
    numels = torch.tensor([p.numel() for p in b.params], dtype=torch.int64)
    blocks = (numels + BLOCK - 1) // BLOCK
    total = int(blocks.sum())
    block_tensor = torch.repeat_interleave(torch.arange(len(b.params), dtype=torch.int32), blocks)
    first_block = torch.cumsum(blocks, 0) - blocks
    block_start = (torch.arange(total, dtype=torch.int64) - first_block[block_tensor.long()]) * BLOCK
    device = b.device
    first_of_tensor = torch.cat([first_block, torch.tensor([total])]).to(device)
    cached = (
        addresses.t().contiguous().to(device),
        numels.to(device),
        torch.tensor(b.indices, dtype=torch.int64, device=device),
        block_tensor.to(device),
        block_start.to(device),
        first_of_tensor,
        total,
        aligned,
    )
    _TABLES[key] = cached
    if len(_TABLES) > _MAX_TABLES:
        _TABLES.popitem(last=False)
    return cached
