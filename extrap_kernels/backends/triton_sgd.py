"""The `triton` backend's SGD family (SGD, Apex's FusedSGD, LARS, EXTRAP-SGD in every mode): one launch
per phase over a bucket, on triton_common.py's cached tables. The per-element math mirrors
csrc/extrap_math.h function for function (Triton cannot include C++); the tests hold both to the same
reference."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ..bucket import Bucket, Phase, count_step, record_gamma, state_dtype
from ..hyper import SGDHyper
from ..lars import trust_ratios
from .triton_common import (
    BLOCK,
    DTYPES,
    EXTRAPOLATE,
    ROUNDING_MODES,
    UPDATE,
    UPDATE_PAST,
    UPDATE_PAST_ANCHOR_FREE,
    abandon_block,
    anchor_dtype,
    block_rounding_bits,
    cached_tables,
    found_inf_skips,
    grad_scaling,
    grad_unscale,
    launch_rates,
    load_value,
    noise_normal,
    program_block,
    row_pointer,
    stochastic_round,
    store_param,
)

# The table's rows: the addresses of x, g, s, m, the step and the last gamma (m and the last gamma hold
# placeholders where a bucket has none: never read then).
ROW_X, ROW_G, ROW_S, ROW_M, ROW_STEP, ROW_LAST_GAMMA, ROWS = (tl.constexpr(row) for row in range(7))


def sgd_columns(b: Bucket) -> tuple:
    """The tensor lists of the table's rows, in ROW_* order."""
    anchors = b.remainders or b.anchors  # (a compensated bucket's remainders: triton_common.anchor_dtype)
    return (b.params, b.grads, anchors, b.momenta or b.anchors, b.steps, b.last_gammas or b.steps)


# ---- the math: csrc/extrap_math.h, line for line -------------------------------------------------
@triton.jit
def regularized_grad(g, s, grad_factor, weight_decay, trust, WD_AFTER_MOMENTUM: tl.constexpr):
    gp = g * grad_factor
    if not WD_AFTER_MOMENTUM:
        gp += weight_decay * s
    return gp * trust


@triton.jit
def base_update(
    s,
    m,
    g,
    lr,
    coefficients,
    grad_factor,
    trust,
    first,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    WD_AFTER_MOMENTUM: tl.constexpr,
):
    """Returns (s, m, d, g'); `coefficients`: (momentum, dampening, weight_decay)."""
    momentum, dampening, weight_decay = coefficients
    gp = regularized_grad(g, s, grad_factor, weight_decay, trust, WD_AFTER_MOMENTUM)
    d = gp
    if MOMENTUM:
        m = tl.where(first, gp, momentum * m + (1.0 - dampening) * gp)
        if NESTEROV:
            d = gp + momentum * m
        else:
            d = m
    if WD_AFTER_MOMENTUM:
        d += weight_decay * s
    s = s - lr * d
    return s, m, d, gp


# ---- the multi-tensor kernel ----------------------------------------------------------------------
@triton.jit
def sgd_pointers(table, t, X_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, C_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor t's (x, g, s, m, step, last gamma), the last gamma of the arithmetic's C_DTYPE; the four arrays said
    16-byte aligned where the bucket's are."""
    x_ptr = row_pointer(table, t, ROWS, ROW_X, X_DTYPE, ALIGNED)
    g_ptr = row_pointer(table, t, ROWS, ROW_G, X_DTYPE, ALIGNED)
    s_ptr = row_pointer(table, t, ROWS, ROW_S, S_DTYPE, ALIGNED)
    if S_DTYPE == tl.int16:  # (the compensated anchor's remainders in the s row: m of the arithmetic's dtype)
        m_ptr = row_pointer(table, t, ROWS, ROW_M, C_DTYPE, ALIGNED)
    else:
        m_ptr = row_pointer(table, t, ROWS, ROW_M, S_DTYPE, ALIGNED)
    step_ptr = row_pointer(table, t, ROWS, ROW_STEP, tl.float32, False)
    last_gamma_ptr = row_pointer(table, t, ROWS, ROW_LAST_GAMMA, C_DTYPE, False)
    return x_ptr, g_ptr, s_ptr, m_ptr, step_ptr, last_gamma_ptr


@triton.jit
def _phase_block(
    ptrs,
    offs,
    mask,
    skip,
    rates,
    coefficients,
    keys,
    PHASE: tl.constexpr,
    X_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    MASTER: tl.constexpr,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    WD_AFTER_MOMENTUM: tl.constexpr,
    EXTRAPOLATE_WITH_MOMENTUM: tl.constexpr,
    PAST_GRAD: tl.constexpr,
    UNSCALES: tl.constexpr,
):
    """One phase over the elements `offs` of one tensor (`mask`: those inside it; None: all of them).
    `rates`: (lr, gamma, grad_factor, trust, unscale); `keys`: (index, noise_std, seed)."""
    x_ptr, g_ptr, s_ptr, m_ptr, step_ptr, last_gamma_ptr = ptrs
    lr, gamma, grad_factor, trust, unscale = rates
    index, noise_std, seed = keys
    if skip:
        abandon_block(x_ptr, s_ptr, offs, mask, PHASE, X_DTYPE, S_DTYPE, MASTER)
    else:
        g = tl.load(g_ptr + offs, mask=mask).to(C_DTYPE)
        if UNSCALES:  # AMP's gradient written back unscaled
            tl.store(g_ptr + offs, (g * unscale).to(X_DTYPE), mask=mask)
        m = tl.zeros_like(g)
        if MOMENTUM:
            m = tl.load(m_ptr + offs, mask=mask).to(C_DTYPE)
        r_s, r_m, r_x = block_rounding_bits(seed, step_ptr, index, offs, ROUNDING)
        if PHASE == EXTRAPOLATE:  # extrapolate: s <- x; x <- s - gamma * e
            momentum, _, weight_decay = coefficients
            if MASTER:
                anchor = tl.load(s_ptr + offs, mask=mask).to(C_DTYPE)
            else:
                anchor = tl.load(x_ptr + offs, mask=mask).to(C_DTYPE)
                tl.store(s_ptr + offs, anchor.to(S_DTYPE), mask=mask)
            e = regularized_grad(g, anchor, grad_factor, weight_decay, trust, WD_AFTER_MOMENTUM)
            if EXTRAPOLATE_WITH_MOMENTUM:
                e += momentum * m
            tl.store(x_ptr + offs, stochastic_round(anchor - gamma * e, r_x, ROUNDING).to(X_DTYPE), mask=mask)
        else:
            step = tl.load(step_ptr)
            if PHASE == UPDATE_PAST_ANCHOR_FREE:  # anchor-free past: x = s - last_gamma * m gives the anchor back
                anchor = load_value(x_ptr, x_ptr, s_ptr, offs, mask, S_DTYPE, C_DTYPE) + tl.load(last_gamma_ptr) * m
            else:
                anchor = load_value(s_ptr, x_ptr, s_ptr, offs, mask, S_DTYPE, C_DTYPE)
            anchor, m, d, gp = base_update(
                anchor, m, g, lr, coefficients, grad_factor, trust, step <= 1.0, MOMENTUM, NESTEROV, WD_AFTER_MOMENTUM
            )
            anchor_stored = stochastic_round(anchor, r_s, ROUNDING)  # (as stored: the local step's x too)
            if MOMENTUM:
                tl.store(m_ptr + offs, stochastic_round(m, r_m, ROUNDING).to(m_ptr.dtype.element_ty), mask=mask)
            if PHASE == UPDATE:  # x <- s; a full-precision s is only the snapshot (or x itself)
                if MASTER:
                    tl.store(s_ptr + offs, anchor, mask=mask)
                store_param(x_ptr, s_ptr, offs, mask, anchor_stored, S_DTYPE, X_DTYPE)
            elif PHASE == UPDATE_PAST or PHASE == UPDATE_PAST_ANCHOR_FREE:
                # past: x <- s - gamma * e (s stored unless recomputed)
                if PHASE == UPDATE_PAST:
                    tl.store(s_ptr + offs, anchor_stored.to(S_DTYPE), mask=mask)
                if PAST_GRAD:
                    x = anchor - gamma * gp
                else:
                    x = anchor - gamma * d
                store_param(x_ptr, s_ptr, offs, mask, stochastic_round(x, r_x, ROUNDING), S_DTYPE, X_DTYPE)
            else:  # noise: x <- s + sigma * xi
                tl.store(s_ptr + offs, anchor_stored.to(S_DTYPE), mask=mask)
                xi = noise_normal(seed, step.to(tl.int64), index, offs).to(C_DTYPE)
                tl.store(x_ptr + offs, stochastic_round(anchor + noise_std * xi, r_x, ROUNDING).to(X_DTYPE), mask=mask)


@triton.jit
def _phase_kernel(
    table,
    numels,
    indices,
    block_tensor,
    block_start,
    trust_ptr,
    scale_ptr,
    found_inf_ptr,
    lr,
    gamma,
    lr_ptr,
    gamma_ptr,
    loss_scale_ptr,
    momentum,
    dampening,
    weight_decay,
    sign,
    noise_std,
    seed,
    PHASE: tl.constexpr,
    X_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    MASTER: tl.constexpr,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    WD_AFTER_MOMENTUM: tl.constexpr,
    EXTRAPOLATE_WITH_MOMENTUM: tl.constexpr,
    PAST_GRAD: tl.constexpr,
    HAS_TRUST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    UNSCALES: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    LR_TENSOR: tl.constexpr,
    GAMMA_TENSOR: tl.constexpr,
    BLOCK: tl.constexpr,
    C_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    # S_DTYPE stores s and m; C_DTYPE computes (they differ for 16-bit state without a master, ROUNDING 1
    # bf16 or 2 fp16: every stored value rounded stochastically with the bits keyed by seed ^ ROUNDING_KEY)
    t, offs, mask, whole = program_block(numels, block_tensor, block_start, BLOCK, ALIGNED)
    ptrs = sgd_pointers(table, t, X_DTYPE, S_DTYPE, C_DTYPE, ALIGNED)
    skip = found_inf_skips(found_inf_ptr, HAS_FOUND_INF)
    lr, gamma = launch_rates(lr, gamma, lr_ptr, gamma_ptr, LR_TENSOR, GAMMA_TENSOR)
    grad_factor, trust = grad_scaling(sign, scale_ptr, trust_ptr, t, HAS_SCALE, HAS_TRUST, C_DTYPE)
    rates = (lr, gamma, grad_factor, trust, grad_unscale(loss_scale_ptr, UNSCALES, C_DTYPE))
    keys = (tl.load(indices + t), noise_std, seed)
    for WHOLE in tl.static_range(2):  # (one pass runs: triton_common.py, "A kernel calls its block function once")
        if whole == (WHOLE == 1):
            _phase_block(
                ptrs,
                offs,
                None if WHOLE == 1 else mask,
                skip,
                rates,
                (momentum, dampening, weight_decay),
                keys,
                PHASE,
                X_DTYPE,
                S_DTYPE,
                C_DTYPE,
                ROUNDING,
                MASTER,
                MOMENTUM,
                NESTEROV,
                WD_AFTER_MOMENTUM,
                EXTRAPOLATE_WITH_MOMENTUM,
                PAST_GRAD,
                UNSCALES,
            )


def apply_sgd(phase: Phase, b: Bucket, h: SGDHyper, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
    """One phase of the SGD family over bucket `b`: one launch."""
    count_step(phase, b, found_inf)
    table, numels, indices, block_tensor, block_start, _, total, aligned = cached_tables(b, sgd_columns(b))
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    if total == 0:
        record_gamma(phase, b, gamma_tensor if gamma_tensor is not None else gamma, found_inf)
        return
    trust = trust_ratios(phase, b, h, grad_scale) if h.lars else None
    dummy = numels  # any device tensor, for pointer arguments that a constexpr switches off
    seed = int(h.seed) & 0xFFFFFFFFFFFFFFFF
    rounding_mode = ROUNDING_MODES[b.dtype] if b.rounds_stochastically else 0
    _phase_kernel[(total,)](
        table,
        numels,
        indices,
        block_tensor,
        block_start,
        trust if trust is not None else dummy,
        grad_scale if grad_scale is not None else dummy,
        found_inf if found_inf is not None else dummy,
        lr,
        gamma,
        lr_tensor if lr_tensor is not None else dummy,
        gamma_tensor if gamma_tensor is not None else dummy,
        grad_scale if grad_scale is not None else dummy,  # (AMP's loss scale: the gradients written back unscaled)
        float(h.momentum),
        float(h.dampening),
        float(h.weight_decay),
        -1.0 if h.maximize else 1.0,
        float(h.noise_std),
        seed,
        PHASE=int(phase),
        X_DTYPE=DTYPES[b.dtype],
        S_DTYPE=anchor_dtype(b),
        C_DTYPE=DTYPES[state_dtype(b.dtype)],
        ROUNDING=rounding_mode,
        MASTER=b.has_master and not b.remainders,
        MOMENTUM=bool(b.momenta),
        NESTEROV=bool(h.nesterov),
        WD_AFTER_MOMENTUM=bool(h.wd_after_momentum),
        EXTRAPOLATE_WITH_MOMENTUM=bool(h.extrapolate_with_momentum),
        PAST_GRAD=bool(h.past_grad),
        HAS_TRUST=trust is not None,
        HAS_SCALE=grad_scale is not None,
        UNSCALES=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        LR_TENSOR=lr_tensor is not None,
        GAMMA_TENSOR=gamma_tensor is not None,
        BLOCK=BLOCK,
        ALIGNED=aligned,
    )
    record_gamma(phase, b, gamma_tensor if gamma_tensor is not None else gamma, found_inf)
