"""The `triton` backend's adaptive bases (Adam, AdamW, LAMB; SPEC "Base update, Adam family and LAMB"): one
launch per phase over a bucket, on triton_kernels.py's cached tables (here with the second moments as two
more columns), the math csrc/extrap_math.h's adaptive_direction and adaptive_element line for line. LAMB's
reading pass is a second kernel writing each block's sums of s^2 and u^2, added per tensor in block order
by a third: deterministic, on the device, no host synchronization."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import lamb
from ..bucket import Bucket, Hyper, Phase, count_step, state_dtype
from .triton_kernels import _DTYPES, BLOCK, _tables, abandon_block, launch_values, noise_normal, program_block

SEGMENT = 128  # blocks a program of the per-tensor sums adds at a time


@triton.jit
def exact_sqrt(x):
    """The correctly rounded square root, as C++'s sqrt (tl.sqrt of fp32 is approximate on GPUs)."""
    root = tl.sqrt(x)
    if x.dtype == tl.float32:
        root = tl.sqrt_rn(x)
    return root


@triton.jit
def bias_corrections(step, log_beta1, log_beta2, C_DTYPE: tl.constexpr, BIAS_CORRECTION: tl.constexpr):
    """1 - beta1^t and sqrt(1 - beta2^t) after update `step`, in double (beta^t as exp(t log beta))."""
    bias1 = tl.full((), 1.0, C_DTYPE)
    bias2_sqrt = tl.full((), 1.0, C_DTYPE)
    if BIAS_CORRECTION:
        t = step.to(tl.float64)
        bias1 = (1.0 - tl.exp(t * log_beta1)).to(C_DTYPE)
        bias2_sqrt = tl.sqrt(1.0 - tl.exp(t * log_beta2)).to(C_DTYPE)
    return bias1, bias2_sqrt


@triton.jit
def device_betas(
    beta1,
    one_minus_beta2,
    beta2,
    grad_gain,
    log_beta1,
    log_beta2,
    beta1_ptr,
    beta2_ptr,
    BETA1_TENSOR: tl.constexpr,
    BETA2_TENSOR: tl.constexpr,
    GRAD_AVERAGING: tl.constexpr,
    C_DTYPE: tl.constexpr,
):
    """Capturable betas (float64 tensors), read as the kernel runs, and what follows from them; the numbers
    the host computed otherwise."""
    if BETA1_TENSOR:
        b1 = tl.load(beta1_ptr)
        beta1 = b1.to(C_DTYPE)
        log_beta1 = tl.log(b1)
        if GRAD_AVERAGING:
            grad_gain = (1.0 - b1).to(C_DTYPE)
    if BETA2_TENSOR:
        b2 = tl.load(beta2_ptr)
        beta2 = b2.to(C_DTYPE)
        one_minus_beta2 = (1.0 - b2).to(C_DTYPE)
        log_beta2 = tl.log(b2)
    return beta1, one_minus_beta2, beta2, grad_gain, log_beta1, log_beta2


@triton.jit
def adaptive_direction(
    s,
    g,
    m,
    v,
    v_max,
    grad_factor,
    weight_decay,
    beta1,
    one_minus_beta2,
    beta2,
    grad_gain,
    eps,
    bias1,
    bias2_sqrt,
    DECOUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
):
    """Returns (u, m, v, v_max): the moments updated with g' and the undamped direction."""
    gp = g * grad_factor
    if not DECOUPLED:
        gp += weight_decay * s
    m = beta1 * m + grad_gain * gp
    v = beta2 * v + (one_minus_beta2 * gp) * gp
    second = v
    if AMSGRAD:
        v_max = tl.maximum(v_max, v)
        second = v_max
    u = (m / bias1) / (exact_sqrt(second) / bias2_sqrt + eps)
    if DECOUPLED:
        u += weight_decay * s
    return u, m, v, v_max


@triton.jit
def _pointers(table, t, X_DTYPE: tl.constexpr, C_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Table rows: x, g, s, m, v, v_max (a placeholder without amsgrad), step. ALIGNED (every array of the
    bucket starts on 16 bytes, checked on the host) is said to the compiler here, on the casts that make the
    pointers: a hint on a value this helper returns would sit on the call, which Triton's inliner drops
    (triton 3.6 and 3.7 then compile scalar accesses)."""
    x_ptr = tl.load(table + 7 * t + 0).to(tl.pointer_type(X_DTYPE))
    g_ptr = tl.load(table + 7 * t + 1).to(tl.pointer_type(X_DTYPE))
    s_ptr = tl.load(table + 7 * t + 2).to(tl.pointer_type(C_DTYPE))
    m_ptr = tl.load(table + 7 * t + 3).to(tl.pointer_type(C_DTYPE))
    v_ptr = tl.load(table + 7 * t + 4).to(tl.pointer_type(C_DTYPE))
    v_max_ptr = tl.load(table + 7 * t + 5).to(tl.pointer_type(C_DTYPE))
    if ALIGNED:
        x_ptr, g_ptr = tl.multiple_of(x_ptr, 16), tl.multiple_of(g_ptr, 16)
        s_ptr, m_ptr = tl.multiple_of(s_ptr, 16), tl.multiple_of(m_ptr, 16)
        v_ptr, v_max_ptr = tl.multiple_of(v_ptr, 16), tl.multiple_of(v_max_ptr, 16)
    step_ptr = tl.load(table + 7 * t + 6).to(tl.pointer_type(tl.float32))
    return x_ptr, g_ptr, s_ptr, m_ptr, v_ptr, v_max_ptr, step_ptr


@triton.jit
def _adaptive_block(
    x_ptr,
    g_ptr,
    s_ptr,
    m_ptr,
    v_ptr,
    v_max_ptr,
    step_ptr,
    offs,
    mask,
    index,
    trust_ptr,
    t,
    scale_ptr,
    found_inf_ptr,
    lr,
    gamma,
    lr_ptr,
    gamma_ptr,
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
    beta1_ptr,
    beta2_ptr,
    PHASE: tl.constexpr,
    X_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    MASTER: tl.constexpr,
    AMSGRAD: tl.constexpr,
    DECOUPLED: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    HAS_TRUST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    LR_TENSOR: tl.constexpr,
    GAMMA_TENSOR: tl.constexpr,
    BETA1_TENSOR: tl.constexpr,
    BETA2_TENSOR: tl.constexpr,
    GRAD_AVERAGING: tl.constexpr,
):
    """One adaptive phase over the elements `offs` of tensor `t` (`mask`: those inside it; None: all)."""
    skip = False
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr) != 0
    if skip:
        abandon_block(x_ptr, s_ptr, offs, mask, PHASE, X_DTYPE, C_DTYPE, MASTER)
    else:  # (LAMB's clipping is folded into grad_scale)
        lr, gamma, grad_factor, trust = launch_values(
            lr,
            gamma,
            lr_ptr,
            gamma_ptr,
            sign,
            scale_ptr,
            trust_ptr,
            t,
            LR_TENSOR,
            GAMMA_TENSOR,
            HAS_SCALE,
            HAS_TRUST,
            C_DTYPE,
        )
        # (new names: a variable assigned in one branch of a run-time `if` keeps its type in the other)
        b1, one_minus_b2, b2, gain, log_b1, log_b2 = device_betas(
            beta1,
            one_minus_beta2,
            beta2,
            grad_gain,
            log_beta1,
            log_beta2,
            beta1_ptr,
            beta2_ptr,
            BETA1_TENSOR,
            BETA2_TENSOR,
            GRAD_AVERAGING,
            C_DTYPE,
        )
        step = tl.load(step_ptr)
        if PHASE == 0:  # the look-ahead: the count after the coming update
            step += 1.0
        bias1, bias2_sqrt = bias_corrections(step, log_b1, log_b2, C_DTYPE, BIAS_CORRECTION)
        g = tl.load(g_ptr + offs, mask=mask).to(C_DTYPE)
        m = tl.load(m_ptr + offs, mask=mask)
        v = tl.load(v_ptr + offs, mask=mask)
        v_max = tl.zeros_like(v)
        if AMSGRAD:
            v_max = tl.load(v_max_ptr + offs, mask=mask)
        if PHASE == 0:  # extrapolate along the look-ahead direction; the state is read only
            if MASTER:
                anchor = tl.load(s_ptr + offs, mask=mask)
            else:
                anchor = tl.load(x_ptr + offs, mask=mask).to(C_DTYPE)
                tl.store(s_ptr + offs, anchor, mask=mask)
            u, _, _, _ = adaptive_direction(
                anchor,
                g,
                m,
                v,
                v_max,
                grad_factor,
                weight_decay,
                b1,
                one_minus_b2,
                b2,
                gain,
                eps,
                bias1,
                bias2_sqrt,
                DECOUPLED,
                AMSGRAD,
            )
            tl.store(x_ptr + offs, (anchor - gamma * (trust * u)).to(X_DTYPE), mask=mask)
        else:
            anchor = tl.load(s_ptr + offs, mask=mask)
            u, m, v, v_max = adaptive_direction(
                anchor,
                g,
                m,
                v,
                v_max,
                grad_factor,
                weight_decay,
                b1,
                one_minus_b2,
                b2,
                gain,
                eps,
                bias1,
                bias2_sqrt,
                DECOUPLED,
                AMSGRAD,
            )
            e = trust * u
            anchor = anchor - lr * e
            tl.store(m_ptr + offs, m, mask=mask)
            tl.store(v_ptr + offs, v, mask=mask)
            if AMSGRAD:
                tl.store(v_max_ptr + offs, v_max, mask=mask)
            if PHASE == 1:  # x <- s; a full-precision s is only the snapshot (or x itself)
                if MASTER:
                    tl.store(s_ptr + offs, anchor, mask=mask)
                tl.store(x_ptr + offs, anchor.to(X_DTYPE), mask=mask)
            elif PHASE == 2:  # past: x <- s - gamma * e
                tl.store(s_ptr + offs, anchor, mask=mask)
                tl.store(x_ptr + offs, (anchor - gamma * e).to(X_DTYPE), mask=mask)
            else:  # noise: x <- s + sigma * xi
                tl.store(s_ptr + offs, anchor, mask=mask)
                xi = noise_normal(seed, step.to(tl.int64), index, offs).to(C_DTYPE)
                tl.store(x_ptr + offs, (anchor + noise_std * xi).to(X_DTYPE), mask=mask)


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
    beta1_ptr,
    beta2_ptr,
    PHASE: tl.constexpr,
    X_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    MASTER: tl.constexpr,
    AMSGRAD: tl.constexpr,
    DECOUPLED: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    HAS_TRUST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
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
    x_ptr, g_ptr, s_ptr, m_ptr, v_ptr, v_max_ptr, step_ptr = _pointers(table, t, X_DTYPE, C_DTYPE, ALIGNED)
    index = tl.load(indices + t)
    if whole:
        _adaptive_block(
            x_ptr,
            g_ptr,
            s_ptr,
            m_ptr,
            v_ptr,
            v_max_ptr,
            step_ptr,
            offs,
            None,
            index,
            trust_ptr,
            t,
            scale_ptr,
            found_inf_ptr,
            lr,
            gamma,
            lr_ptr,
            gamma_ptr,
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
            beta1_ptr,
            beta2_ptr,
            PHASE,
            X_DTYPE,
            C_DTYPE,
            MASTER,
            AMSGRAD,
            DECOUPLED,
            BIAS_CORRECTION,
            HAS_TRUST,
            HAS_SCALE,
            HAS_FOUND_INF,
            LR_TENSOR,
            GAMMA_TENSOR,
            BETA1_TENSOR,
            BETA2_TENSOR,
            GRAD_AVERAGING,
        )
    else:
        _adaptive_block(
            x_ptr,
            g_ptr,
            s_ptr,
            m_ptr,
            v_ptr,
            v_max_ptr,
            step_ptr,
            offs,
            mask,
            index,
            trust_ptr,
            t,
            scale_ptr,
            found_inf_ptr,
            lr,
            gamma,
            lr_ptr,
            gamma_ptr,
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
            beta1_ptr,
            beta2_ptr,
            PHASE,
            X_DTYPE,
            C_DTYPE,
            MASTER,
            AMSGRAD,
            DECOUPLED,
            BIAS_CORRECTION,
            HAS_TRUST,
            HAS_SCALE,
            HAS_FOUND_INF,
            LR_TENSOR,
            GAMMA_TENSOR,
            BETA1_TENSOR,
            BETA2_TENSOR,
            GRAD_AVERAGING,
        )


@triton.jit
def _norms_kernel(
    table,
    numels,
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
    beta1_ptr,
    beta2_ptr,
    X_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    READS_X: tl.constexpr,
    AMSGRAD: tl.constexpr,
    DECOUPLED: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BETA1_TENSOR: tl.constexpr,
    BETA2_TENSOR: tl.constexpr,
    GRAD_AVERAGING: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """LAMB's reading pass, one block: its sums of s^2 and u^2 (u of the coming update) to block_sums[pid]."""
    pid = tl.program_id(0)
    t, offs, mask, _ = program_block(numels, block_tensor, block_start, BLOCK, False)
    x_ptr, g_ptr, s_ptr, m_ptr, v_ptr, v_max_ptr, step_ptr = _pointers(table, t, X_DTYPE, C_DTYPE, False)
    grad_factor = sign
    if HAS_SCALE:
        grad_factor = sign / tl.load(scale_ptr).to(C_DTYPE)
    beta1, one_minus_beta2, beta2, grad_gain, log_beta1, log_beta2 = device_betas(
        beta1,
        one_minus_beta2,
        beta2,
        grad_gain,
        log_beta1,
        log_beta2,
        beta1_ptr,
        beta2_ptr,
        BETA1_TENSOR,
        BETA2_TENSOR,
        GRAD_AVERAGING,
        C_DTYPE,
    )
    bias1, bias2_sqrt = bias_corrections(tl.load(step_ptr) + 1.0, log_beta1, log_beta2, C_DTYPE, BIAS_CORRECTION)
    if READS_X:  # before a full-precision snapshot the anchor is x itself
        anchor = tl.load(x_ptr + offs, mask=mask, other=0.0).to(C_DTYPE)
    else:
        anchor = tl.load(s_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(C_DTYPE)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    v_max = tl.zeros_like(v)
    if AMSGRAD:
        v_max = tl.load(v_max_ptr + offs, mask=mask, other=0.0)
    u, _, _, _ = adaptive_direction(
        anchor,
        g,
        m,
        v,
        v_max,
        grad_factor,
        weight_decay,
        beta1,
        one_minus_beta2,
        beta2,
        grad_gain,
        eps,
        bias1,
        bias2_sqrt,
        DECOUPLED,
        AMSGRAD,
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


def _constants(b: Bucket, h: Hyper) -> dict:
    """The arguments both kernels take besides the tables, as the CPU and CUDA launchers derive them
    (launch.h); capturable betas as float64 device tensors, which the kernels read."""
    (beta1, beta1_tensor), (beta2, beta2_tensor) = h.kernel_betas(b)
    averaging = bool(h.grad_averaging or h.base != "lamb")
    return dict(
        weight_decay=float(h.weight_decay),
        sign=-1.0 if h.maximize else 1.0,
        beta1=beta1,
        one_minus_beta2=1.0 - beta2,
        beta2=beta2,
        grad_gain=(1.0 - beta1) if averaging else 1.0,
        eps=float(h.eps),
        # (beta 0: its powers are 0 from the first step on, exp(t * -inf))
        log_beta1=math.log(beta1) if beta1 > 0 else -math.inf,
        log_beta2=math.log(beta2) if beta2 > 0 else -math.inf,
        beta1_ptr=beta1_tensor if beta1_tensor is not None else b.steps[0],
        beta2_ptr=beta2_tensor if beta2_tensor is not None else b.steps[0],
        BETA1_TENSOR=beta1_tensor is not None,
        BETA2_TENSOR=beta2_tensor is not None,
        GRAD_AVERAGING=averaging,
    )


def _columns(b: Bucket) -> tuple:
    return (
        b.params,
        b.grads,
        b.anchors,
        b.momenta,
        b.second_moments,
        b.max_second_moments or b.second_moments,
        b.steps,
    )


def lamb_sums(
    phase: Phase,
    b: Bucket,
    h: Hyper,
    grad_scale: Tensor | None,
    tables: tuple | None = None,
    constants: dict | None = None,
) -> Tensor:
    """The reading pass: per tensor, the sums of s^2 and u^2 ([tensors, 2], the state dtype). `tables` and
    `constants`: the bucket's, where the caller has them already."""
    tables = tables or _tables(b, _columns(b), streamed=6)
    table, numels, _, block_tensor, block_start, first_of_tensor, total, _ = tables
    dtype = state_dtype(b.dtype)
    block_sums = torch.empty(total, 2, dtype=dtype, device=b.device)
    sums = torch.zeros(len(b.params), 2, dtype=dtype, device=b.device)
    if total == 0:
        return sums
    _norms_kernel[(total,)](
        table,
        numels,
        block_tensor,
        block_start,
        grad_scale if grad_scale is not None else numels,
        block_sums,
        **(constants or _constants(b, h)),
        X_DTYPE=_DTYPES[b.dtype],
        C_DTYPE=_DTYPES[dtype],
        READS_X=phase == Phase.EXTRAPOLATE and not b.has_master,
        AMSGRAD=bool(b.max_second_moments),
        DECOUPLED=bool(h.decoupled),
        BIAS_CORRECTION=bool(h.bias_correction),
        HAS_SCALE=grad_scale is not None,
        BLOCK=BLOCK,
    )
    _segment_sums_kernel[(len(b.params),)](block_sums, first_of_tensor, sums, SEGMENT=SEGMENT)
    return sums


def apply_adaptive(
    phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None, found_inf: Tensor | None = None
) -> None:
    """One adaptive phase over the bucket (LAMB: its reading pass first), counting the step of an update."""
    if phase not in (Phase.EXTRAPOLATE, Phase.UPDATE, Phase.UPDATE_PAST, Phase.UPDATE_NOISE):
        raise ValueError(f"phase {phase!r} has no adaptive form")
    tables = _tables(b, _columns(b), streamed=6)  # (once, as the constants: LAMB's passes share them)
    constants = _constants(b, h) if tables[6] else None  # (no launch over a bucket without elements)
    grad_scale, trust = lamb.step_inputs(
        b, h, grad_scale, lambda scale: lamb_sums(phase, b, h, scale, tables, constants)
    )
    count_step(phase, b, found_inf)
    table, numels, indices, block_tensor, block_start, _, total, aligned = tables
    if total == 0:
        return
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    dummy = numels  # any device tensor, for pointer arguments that a constexpr switches off
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
        noise_std=float(h.noise_std),
        seed=int(h.seed) & 0xFFFFFFFFFFFFFFFF,
        **constants,
        PHASE=int(phase),
        X_DTYPE=_DTYPES[b.dtype],
        C_DTYPE=_DTYPES[state_dtype(b.dtype)],
        MASTER=b.has_master,
        AMSGRAD=bool(b.max_second_moments),
        DECOUPLED=bool(h.decoupled),
        BIAS_CORRECTION=bool(h.bias_correction),
        HAS_TRUST=trust is not None,
        HAS_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        LR_TENSOR=lr_tensor is not None,
        GAMMA_TENSOR=gamma_tensor is not None,
        BLOCK=BLOCK,
        ALIGNED=aligned,
    )
