"""The `triton` backend's adaptive bases (Adam, AdamW, LAMB, Adagrad; SPEC "Base update, Adam family and LAMB"
and "Adagrad"): one launch per phase over a bucket, on triton_common.py's cached tables (here with the second
moments as two more rows), the math csrc/extrap_math.h's adaptive_direction and adaptive_element line for line
(triton_adaptive_math.py). LAMB's reading pass runs first (triton_lamb.py).

Without a master (ROUNDING 1 bf16, 2 fp16) s is a 16-bit x's own type and the stored s and x are rounded
stochastically; 16-bit moments (MOMENT_ROUNDING 1 bf16, 2 fp16; 0 in the look-ahead, which stores none) are rounded
before the direction reads them, under their own key. MOMENTS: the moments kept (Adagrad keeps no m: it is g'
itself; NovoGrad no v: `trust` is then the tensor's running norm). The anchor-free past update (Adam's, AdamW's and
LAMB's, on full-precision x or a 16-bit one without a master) recovers s from x and the stored moments, and stores
no s."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .. import lamb, novograd_math, recovery
from ..bucket import Bucket, Phase, count_step, state_dtype
from ..hyper import AdamHyper
from .triton_adaptive_math import (
    WITH_MAX,
    adaptive_coefficients,
    adaptive_columns,
    constants,
    load_moments,
    moment_bits,
    moment_rounding,
    moments_kept,
    pointers,
    recovered_anchor,
    step_direction,
    store_moments,
)
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
    stochastic_round,
    store_param,
)
from .triton_lamb import lamb_sums


@triton.jit
def _adaptive_block(
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
    MOMENT_ROUNDING: tl.constexpr,
    MASTER: tl.constexpr,
    MOMENTS: tl.constexpr,
    DECOUPLED: tl.constexpr,
    UNSCALES: tl.constexpr,
):
    """One adaptive phase over the elements `offs` of one tensor (`mask`: those inside it; None: all); `rates`:
    (lr, gamma, grad_factor, trust, unscale), `keys`: (index, step, noise_std, seed).
    ROUNDING, MOMENT_ROUNDING, MOMENTS and the anchor-free update: the module's docstring."""
    x_ptr, g_ptr, s_ptr, m_ptr, v_ptr, v_max_ptr, step_ptr, recovery_ptr = ptrs  # (the step comes read, in keys)
    lr, gamma, grad_factor, trust, unscale = rates
    index, step, noise_std, seed = keys
    if skip:
        abandon_block(x_ptr, s_ptr, offs, mask, PHASE, X_DTYPE, S_DTYPE, MASTER)
    else:  # (LAMB's clipping is folded into grad_scale)
        g = tl.load(g_ptr + offs, mask=mask).to(C_DTYPE)
        if UNSCALES:  # AMP's gradient written back unscaled (by the loss scale alone)
            tl.store(g_ptr + offs, (g * unscale).to(X_DTYPE), mask=mask)
        m, v, v_max = load_moments(m_ptr, v_ptr, v_max_ptr, offs, mask, MOMENTS, C_DTYPE)
        r_s, _, r_x = block_rounding_bits(seed, step_ptr, index, offs, ROUNDING)
        moment_random = moment_bits(seed, step, index, offs, MOMENT_ROUNDING)
        if PHASE == EXTRAPOLATE and not MASTER:  # (the look-ahead reads the state only; the snapshot is x)
            anchor = tl.load(x_ptr + offs, mask=mask).to(C_DTYPE)
            tl.store(s_ptr + offs, anchor.to(S_DTYPE), mask=mask)
        elif PHASE == UPDATE_PAST_ANCHOR_FREE:  # x_t and update t's moments give s_t back (recovery.py)
            x = load_value(x_ptr, x_ptr, s_ptr, offs, mask, S_DTYPE, C_DTYPE)  # (compensated: S_DTYPE int16)
            anchor = recovered_anchor(x, m, v, v_max, recovery_ptr, coefficients, MOMENTS == WITH_MAX)
        else:
            anchor = load_value(s_ptr, x_ptr, s_ptr, offs, mask, S_DTYPE, C_DTYPE)
        e, m, v, v_max = step_direction(
            anchor,
            g,
            m,
            v,
            v_max,
            grad_factor,
            trust,
            coefficients,
            DECOUPLED,
            MOMENTS,
            moment_random,
            MOMENT_ROUNDING,
        )
        if PHASE == EXTRAPOLATE:  # extrapolate along the look-ahead direction
            tl.store(x_ptr + offs, stochastic_round(anchor - gamma * e, r_x, ROUNDING).to(X_DTYPE), mask=mask)
        else:
            anchor = anchor - lr * e
            anchor_stored = stochastic_round(anchor, r_s, ROUNDING)  # (as stored: the local step's x too)
            store_moments(m_ptr, v_ptr, v_max_ptr, offs, mask, m, v, v_max, MOMENTS)
            if PHASE == UPDATE:  # x <- s; a full-precision s is only the snapshot (or x itself)
                if MASTER:
                    tl.store(s_ptr + offs, anchor, mask=mask)
                store_param(x_ptr, s_ptr, offs, mask, anchor_stored, S_DTYPE, X_DTYPE)
            elif PHASE == UPDATE_PAST or PHASE == UPDATE_PAST_ANCHOR_FREE:  # past: x <- s - gamma * e
                if PHASE == UPDATE_PAST:  # (the anchor-free update keeps no s: the next one recovers it)
                    tl.store(s_ptr + offs, anchor_stored.to(S_DTYPE), mask=mask)
                x = stochastic_round(anchor - gamma * e, r_x, ROUNDING)
                store_param(x_ptr, s_ptr, offs, mask, x, S_DTYPE, X_DTYPE)
            else:  # noise: x <- s + sigma * xi
                tl.store(s_ptr + offs, anchor_stored.to(S_DTYPE), mask=mask)
                xi = noise_normal(seed, step.to(tl.int64), index, offs).to(C_DTYPE)
                x = anchor + noise_std * xi
                tl.store(x_ptr + offs, stochastic_round(x, r_x, ROUNDING).to(X_DTYPE), mask=mask)


@triton.jit
def _adaptive_kernel(
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
    weight_decay,
    sign,
    noise_std,
    seed,
    beta1,
    one_minus_beta2,
    beta2,
    grad_gain,
    eps,
    log_beta1,
    log_beta2,
    lr_decay,
    PHASE: tl.constexpr,
    X_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    M_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    MOMENT_ROUNDING: tl.constexpr,
    MASTER: tl.constexpr,
    MOMENTS: tl.constexpr,
    DECOUPLED: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    HAS_TRUST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    UNSCALES: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    LR_TENSOR: tl.constexpr,
    GAMMA_TENSOR: tl.constexpr,
    BETA1_TENSOR: tl.constexpr,
    BETA2_TENSOR: tl.constexpr,
    GRAD_AVERAGING: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    t, offs, mask, whole = program_block(numels, block_tensor, block_start, BLOCK, ALIGNED)
    ptrs = pointers(table, t, X_DTYPE, S_DTYPE, C_DTYPE, M_DTYPE, ALIGNED)
    lr, gamma = launch_rates(lr, gamma, lr_ptr, gamma_ptr, LR_TENSOR, GAMMA_TENSOR)
    grad_factor, trust = grad_scaling(sign, scale_ptr, trust_ptr, t, HAS_SCALE, HAS_TRUST, C_DTYPE)
    step = tl.load(ptrs[6]) + (1.0 if PHASE == EXTRAPOLATE else 0.0)  # (ptrs[6]: the step; +1: the look-ahead's)
    betas = (beta1, one_minus_beta2, beta2, grad_gain, log_beta1, log_beta2, lr_decay)
    coefficients = adaptive_coefficients(
        step, weight_decay, eps, betas, BETA1_TENSOR, BETA2_TENSOR, GRAD_AVERAGING, BIAS_CORRECTION, C_DTYPE, PHASE
    )
    for WHOLE in tl.static_range(2):  # (one pass runs: triton_common.py, "A kernel calls its block function once")
        if whole == (WHOLE == 1):
            _adaptive_block(
                ptrs,
                offs,
                None if WHOLE == 1 else mask,
                found_inf_skips(found_inf_ptr, HAS_FOUND_INF),
                (lr, gamma, grad_factor, trust, grad_unscale(loss_scale_ptr, UNSCALES, C_DTYPE)),
                coefficients,
                (tl.load(indices + t), step, noise_std, seed),
                PHASE,
                X_DTYPE,
                S_DTYPE,
                C_DTYPE,
                ROUNDING,
                MOMENT_ROUNDING,
                MASTER,
                MOMENTS,
                DECOUPLED,
                UNSCALES,
            )


def apply_adaptive(
    phase: Phase, b: Bucket, h: AdamHyper, grad_scale: Tensor | None = None, found_inf: Tensor | None = None
) -> None:
    """One adaptive phase over the bucket (LAMB: its reading pass first), counting the step of an update (and
    after the anchor-free one, recording its recovery weights)."""
    phases = (Phase.EXTRAPOLATE, Phase.UPDATE, Phase.UPDATE_PAST, Phase.UPDATE_NOISE)
    if phase not in phases and not recovery.recovers(phase, b, h):  # (anchor-free: the Adam family's alone)
        raise ValueError(f"phase {phase!r} has no adaptive form")
    loss_scale = grad_scale  # (AMP's: LAMB folds its clipping into the grad_scale the kernel divides by)
    tables = cached_tables(b, adaptive_columns(b), streamed=6)  # (once, as the constants: LAMB's passes share them)
    launch_constants = constants(b, h) if tables[6] else None  # (no launch over a bucket without elements)
    grad_scale, trust = lamb.step_inputs(
        b, h, grad_scale, lambda scale: lamb_sums(phase, b, h, scale, tables, launch_constants)
    )
    if h.blends_grad_norms:  # NovoGrad's running norms, where the trust ratios go (a new tensor: stored at once)
        trust = novograd_math.running_norms(b, h, grad_scale)
        if phase != Phase.EXTRAPOLATE:
            novograd_math.store_norms(b, trust, found_inf)
    count_step(phase, b, found_inf)
    table, numels, indices, block_tensor, block_start, _, total, aligned = tables
    if total == 0:
        return recovery.record(phase, b, h, found_inf, trust)
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    dummy = numels  # any device tensor, for pointer arguments that a constexpr switches off
    seed = int(h.seed) & 0xFFFFFFFFFFFFFFFF
    _adaptive_kernel[(total,)](
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
        loss_scale if loss_scale is not None else dummy,
        noise_std=float(h.noise_std),
        seed=seed,
        **launch_constants,
        lr_decay=float(h.lr_decay),
        PHASE=int(phase),
        X_DTYPE=DTYPES[b.dtype],
        S_DTYPE=anchor_dtype(b),
        C_DTYPE=DTYPES[state_dtype(b.dtype)],
        M_DTYPE=DTYPES[b.moment_dtype],
        ROUNDING=ROUNDING_MODES[b.dtype] if b.rounds_stochastically else 0,
        MOMENT_ROUNDING=moment_rounding(b, phase),
        MASTER=b.has_master and not b.remainders,
        MOMENTS=moments_kept(b),
        DECOUPLED=bool(h.decoupled),
        BIAS_CORRECTION=bool(h.bias_correction),
        HAS_TRUST=trust is not None,
        HAS_SCALE=grad_scale is not None,
        UNSCALES=loss_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        LR_TENSOR=lr_tensor is not None,
        GAMMA_TENSOR=gamma_tensor is not None,
        BLOCK=BLOCK,
        ALIGNED=aligned,
    )
    recovery.record(phase, b, h, found_inf, None if h.blends_grad_norms else trust)
