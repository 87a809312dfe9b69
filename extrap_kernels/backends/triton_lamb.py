"""LAMB's reading pass on the `triton` backend: a kernel writing each block's sums of s^2 and u^2, added per
tensor in block order by a second: deterministic, on the device, no host synchronization."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..bucket import Bucket, Phase, state_dtype
from ..hyper import AdamHyper
from .triton_adaptive_math import (
    FIRST_AND_SECOND,
    WITH_MAX,
    adaptive_coefficients,
    adaptive_columns,
    adaptive_direction,
    constants,
    load_moments,
    moment_bits,
    moment_rounding,
    pointers,
    recovered_anchor,
)
from .triton_common import (
    BLOCK,
    DTYPES,
    UPDATE_PAST_ANCHOR_FREE,
    anchor_dtype,
    cached_tables,
    grad_scaling,
    load_value,
    program_block,
)

SEGMENT = 128  # blocks a program of the per-tensor sums adds at a time


@triton.jit
def _norms_kernel(
    table,
    numels,
    indices,
    block_tensor,
    block_start,
    scale_ptr,
    block_sums,
    weight_decay,
    sign,
    beta1,
    one_minus_beta2,
    beta2,
    grad_gain,
    eps,
    log_beta1,
    log_beta2,
    seed,
    X_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    M_DTYPE: tl.constexpr,
    MOMENT_ROUNDING: tl.constexpr,
    READS_X: tl.constexpr,
    PHASE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    DECOUPLED: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BETA1_TENSOR: tl.constexpr,
    BETA2_TENSOR: tl.constexpr,
    GRAD_AVERAGING: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """LAMB's reading pass, one block: its sums of s^2 and u^2 (u of the coming update) to block_sums[pid]. The
    anchor-free update's (PHASE) takes s as that update recovers it, from x and the moments stored before it. 16-bit
    moments (MOMENT_ROUNDING; 0 before a look-ahead) are rounded as the coming update will round them, keyed by its
    count."""
    pid = tl.program_id(0)
    t, offs, mask, _ = program_block(numels, block_tensor, block_start, BLOCK, False)
    x_ptr, g_ptr, s_ptr, m_ptr, v_ptr, v_max_ptr, step_ptr, recovery_ptr = pointers(
        table, t, X_DTYPE, S_DTYPE, C_DTYPE, M_DTYPE, False
    )
    grad_factor, _ = grad_scaling(sign, scale_ptr, scale_ptr, t, HAS_SCALE, False, C_DTYPE)
    betas = (beta1, one_minus_beta2, beta2, grad_gain, log_beta1, log_beta2, 0.0)
    step = tl.load(step_ptr) + 1.0  # (the count of the coming update)
    coefficients = adaptive_coefficients(
        step,
        weight_decay,
        eps,
        betas,
        BETA1_TENSOR,
        BETA2_TENSOR,
        GRAD_AVERAGING,
        BIAS_CORRECTION,
        C_DTYPE,
        PHASE,  # (the count of the coming update: the anchor-free one's last corrections are the stored count's)
    )
    m, v, v_max = load_moments(m_ptr, v_ptr, v_max_ptr, offs, mask, WITH_MAX if AMSGRAD else FIRST_AND_SECOND, C_DTYPE)
    if PHASE == UPDATE_PAST_ANCHOR_FREE:  # x_t and update t's moments give s_t back (recovery.py)
        x = load_value(x_ptr, x_ptr, s_ptr, offs, mask, S_DTYPE, C_DTYPE)  # (compensated: S_DTYPE int16)
        anchor = tl.where(mask, recovered_anchor(x, m, v, v_max, recovery_ptr, coefficients, AMSGRAD), 0.0)
    elif READS_X:  # before a snapshot of x's own precision the anchor is x itself
        anchor = tl.load(x_ptr + offs, mask=mask, other=0.0).to(C_DTYPE)
    else:
        anchor = tl.where(mask, load_value(s_ptr, x_ptr, s_ptr, offs, mask, S_DTYPE, C_DTYPE), 0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(C_DTYPE)
    moment_random = moment_bits(seed, step, tl.load(indices + t), offs, MOMENT_ROUNDING)
    u, _, _, _ = adaptive_direction(
        anchor, g, m, v, v_max, grad_factor, coefficients, DECOUPLED, AMSGRAD, moment_random, MOMENT_ROUNDING
    )
    u = tl.where(mask, u, 0.0)  # (0 / 0 where eps is 0)
    tl.store(block_sums + 2 * pid, tl.sum(anchor * anchor, 0))
    tl.store(block_sums + 2 * pid + 1, tl.sum(u * u, 0))


@triton.jit
def _segment_sums_kernel(block_sums, first_block, sums, SEGMENT: tl.constexpr):
    """One tensor's sums from its consecutive blocks' sums, added in a fixed order."""
    t = tl.program_id(0)
    begin = tl.load(first_block + t)
    end = tl.load(first_block + t + 1)
    lanes = tl.arange(0, SEGMENT)
    s_squares = tl.zeros([SEGMENT], dtype=block_sums.dtype.element_ty)
    u_squares = tl.zeros([SEGMENT], dtype=block_sums.dtype.element_ty)
    b = begin
    while b < end:  # (not range(begin, end, ...): triton 3.6's interpreter cannot take loaded bounds there)
        blocks = b + lanes
        inside = blocks < end
        s_squares += tl.load(block_sums + 2 * blocks, mask=inside, other=0.0)
        u_squares += tl.load(block_sums + 2 * blocks + 1, mask=inside, other=0.0)
        b += SEGMENT
    tl.store(sums + 2 * t, tl.sum(s_squares, 0))
    tl.store(sums + 2 * t + 1, tl.sum(u_squares, 0))


def lamb_sums(
    phase: Phase,
    b: Bucket,
    h: AdamHyper,
    grad_scale: Tensor | None,
    tables: tuple | None = None,
    launch_constants: dict | None = None,
) -> Tensor:
    """The reading pass: per tensor, the sums of s^2 and u^2 ([tensors, 2], the state dtype). `tables` and
    `launch_constants`: the bucket's, where the caller has them already."""
    tables = tables or cached_tables(b, adaptive_columns(b), streamed=6)
    table, numels, indices, block_tensor, block_start, first_of_tensor, total, _ = tables
    dtype = state_dtype(b.dtype)
    block_sums = torch.empty(total, 2, dtype=dtype, device=b.device)
    sums = torch.zeros(len(b.params), 2, dtype=dtype, device=b.device)
    if total == 0:
        return sums
    _norms_kernel[(total,)](
        table,
        numels,
        indices,
        block_tensor,
        block_start,
        grad_scale if grad_scale is not None else numels,
        block_sums,
        **(launch_constants or constants(b, h)),
        seed=int(h.seed) & 0xFFFFFFFFFFFFFFFF,
        X_DTYPE=DTYPES[b.dtype],
        S_DTYPE=anchor_dtype(b),
        C_DTYPE=DTYPES[dtype],
        M_DTYPE=DTYPES[b.moment_dtype],
        MOMENT_ROUNDING=moment_rounding(b, phase),
        READS_X=phase == Phase.EXTRAPOLATE and not b.has_master,
        PHASE=int(phase) if phase == Phase.UPDATE_PAST_ANCHOR_FREE else 0,
        AMSGRAD=bool(b.max_second_moments),
        DECOUPLED=bool(h.decoupled),
        BIAS_CORRECTION=bool(h.bias_correction),
        HAS_SCALE=grad_scale is not None,
        BLOCK=BLOCK,
    )
    _segment_sums_kernel[(len(b.params),)](block_sums, first_of_tensor, sums, SEGMENT=SEGMENT)
    return sums
