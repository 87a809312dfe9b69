"""The `triton` backend's adaptive bases (Adam, AdamW, LAMB, Adagrad; SPEC "Base update, Adam family and LAMB"): the
per-element math (csrc/extrap_math.h's adaptive_direction, line for line), the table's rows and the
launch constants that the phase kernel (triton_adaptive.py) and LAMB's reading pass (triton_lamb.py)
share."""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ..bucket import Bucket
from ..hyper import AdamHyper
from .triton_common import (
    MOMENT_KEY,
    ROUNDING_MODES,
    UPDATE_PAST_ANCHOR_FREE,
    rounding_bits,
    row_pointer,
    stochastic_round,
)

# The table's rows: the addresses of x, g, s, m, v, v_max (a placeholder without amsgrad), the step and the anchor-free
# update's recovery weights (recovery.py; a placeholder in the other phases).
ROW_X, ROW_G, ROW_S, ROW_M, ROW_V, ROW_V_MAX, ROW_STEP, ROW_RECOVERY, ROWS = (tl.constexpr(row) for row in range(9))
# The moments a launch keeps (the kernels' MOMENTS, csrc/extrap_math.h's Moments): Adagrad's sum v alone, m and v,
# with amsgrad v_max too, or NovoGrad's m with one running gradient norm per tensor (passed as the trust).
SUM_ONLY, FIRST_AND_SECOND, WITH_MAX, FIRST_AND_NORM = (tl.constexpr(kind) for kind in (1, 2, 3, 4))


def moments_kept(b: Bucket) -> int:
    """The bucket's MOMENTS."""
    if b.grad_norms:
        return int(FIRST_AND_NORM)
    return int(WITH_MAX if b.max_second_moments else FIRST_AND_SECOND if b.momenta else SUM_ONLY)


def moment_rounding(b: Bucket, phase) -> int:
    """The kernels' MOMENT_ROUNDING: 1 (bf16) or 2 (fp16) where a phase stores 16-bit moments (exp_avg_dtype),
    rounded stochastically; 0 for full-precision moments and for the look-ahead, which stores none."""
    return ROUNDING_MODES[b.moment_dtype] if b.rounds_moments and phase != 0 else 0


def adaptive_columns(b: Bucket) -> tuple:
    """The tensor lists of the table's rows, in ROW_* order (the first six are streamed; Adagrad, which keeps
    no first moment, has its v in the m row as a placeholder, as v_max is without amsgrad; NovoGrad, which keeps no
    v, its m in the v rows)."""
    second = b.second_moments or b.momenta
    return (
        b.params,
        b.grads,
        b.remainders or b.anchors,  # (a compensated bucket's remainders: triton_common.anchor_dtype)
        b.momenta or second,
        second,
        b.max_second_moments or second,
        b.steps,
        b.last_gammas or b.steps,
    )


@triton.jit
def exact_sqrt(x):
    """The correctly rounded square root, as C++'s sqrt (tl.sqrt of fp32 is approximate on GPUs)."""
    root = tl.sqrt(x)
    if x.dtype == tl.float32:
        root = tl.sqrt_rn(x)
    return root


@triton.jit
def bias_corrections(step, log_beta1, log_beta2, lr_decay, C_DTYPE: tl.constexpr, BIAS_CORRECTION: tl.constexpr):
    """1 - beta1^t and sqrt(1 - beta2^t) after update `step`, in double (beta^t as exp(t log beta)); without
    them bias1 carries Adagrad's learning-rate decay, 1 + (t - 1) * lr_decay (1 where lr_decay is 0)."""
    bias1 = tl.full((), 1.0, C_DTYPE)
    bias2_sqrt = tl.full((), 1.0, C_DTYPE)
    if BIAS_CORRECTION:
        t = step.to(tl.float64)
        bias1 = (1.0 - tl.exp(t * log_beta1)).to(C_DTYPE)
        bias2_sqrt = tl.sqrt(1.0 - tl.exp(t * log_beta2)).to(C_DTYPE)
    elif lr_decay != 0.0:
        bias1 = (1.0 + (step.to(C_DTYPE) - 1.0) * lr_decay).to(C_DTYPE)
    return bias1, bias2_sqrt


@triton.jit
def adaptive_coefficients(
    step,
    weight_decay,
    eps,
    betas,
    BETA1_TENSOR: tl.constexpr,
    BETA2_TENSOR: tl.constexpr,
    GRAD_AVERAGING: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    C_DTYPE: tl.constexpr,
    PHASE: tl.constexpr,
):
    """What adaptive_direction takes besides the arrays, for update `step`: (weight_decay, beta1,
    1 - beta2, beta2, grad_gain, eps, bias1, bias2_sqrt, last_bias1, last_bias2_sqrt), the last two those of the
    update step - 1 that the anchor-free phase recovers its anchor with (recovered_anchor; 1 at step 1, and in the
    other phases). `betas`: the host's (beta1, 1 - beta2, beta2, grad_gain, log beta1, log beta2) and Adagrad's
    lr_decay (its 1 - beta2 is the gain of g'^2: 1, with beta2 = 1); with BETA1_TENSOR (BETA2_TENSOR) beta1 (beta2)
    is the capturable beta's float64 tensor instead, read as the kernel runs, and what derives from it with it."""
    beta1, one_minus_beta2, beta2, grad_gain, log_beta1, log_beta2, lr_decay = betas
    if BETA1_TENSOR:
        b1 = tl.load(beta1)
        beta1 = b1.to(C_DTYPE)
        log_beta1 = tl.log(b1)
        if GRAD_AVERAGING:
            grad_gain = (1.0 - b1).to(C_DTYPE)
    if BETA2_TENSOR:
        b2 = tl.load(beta2)
        beta2 = b2.to(C_DTYPE)
        one_minus_beta2 = (1.0 - b2).to(C_DTYPE)
        log_beta2 = tl.log(b2)
    bias1, bias2_sqrt = bias_corrections(step, log_beta1, log_beta2, lr_decay, C_DTYPE, BIAS_CORRECTION)
    last_bias1 = tl.full((), 1.0, C_DTYPE)
    last_bias2_sqrt = tl.full((), 1.0, C_DTYPE)
    if PHASE == UPDATE_PAST_ANCHOR_FREE:
        last = tl.maximum(step - 1.0, 1.0)  # (the count before; where it is 0 the corrections are 1: below)
        last1, last2_sqrt = bias_corrections(last, log_beta1, log_beta2, lr_decay, C_DTYPE, BIAS_CORRECTION)
        last_bias1 = tl.where(step > 1.0, last1, last_bias1)
        last_bias2_sqrt = tl.where(step > 1.0, last2_sqrt, last_bias2_sqrt)
    return weight_decay, beta1, one_minus_beta2, beta2, grad_gain, eps, bias1, bias2_sqrt, last_bias1, last_bias2_sqrt


@triton.jit
def moment_bits(seed, step, index, offs, MOMENT_ROUNDING: tl.constexpr):
    """The 16-bit moments' rounding bits (m, v) of the elements `offs`: the noise's counter under the key seed ^
    MOMENT_KEY, keyed by the count of the update that stores them (zeros where none is rounded)."""
    r_m = tl.zeros_like(offs).to(tl.uint32)
    r_v = r_m
    if MOMENT_ROUNDING != 0:
        r_m, r_v, _ = rounding_bits(seed, step.to(tl.int64), index, offs, MOMENT_KEY)
    return r_m, r_v


@triton.jit
def adaptive_direction(
    s,
    g,
    m,
    v,
    v_max,
    grad_factor,
    coefficients,
    DECOUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
    moment_random,
    MOMENT_ROUNDING: tl.constexpr,
):
    """Returns (u, m, v, v_max): the moments updated with g' (16-bit ones rounded stochastically with
    `moment_random`, moment_bits', before the direction reads them) and the undamped direction."""
    weight_decay, beta1, one_minus_beta2, beta2, grad_gain, eps, bias1, bias2_sqrt, _, _ = coefficients
    gp = g * grad_factor
    if not DECOUPLED:
        gp += weight_decay * s
    m = beta1 * m + grad_gain * gp
    v = beta2 * v + (one_minus_beta2 * gp) * gp
    if MOMENT_ROUNDING != 0:
        m = stochastic_round(m, moment_random[0], MOMENT_ROUNDING)
        v = stochastic_round(v, moment_random[1], MOMENT_ROUNDING)
    second = v
    if AMSGRAD:
        v_max = tl.maximum(v_max, v)
        second = v_max
    u = (m / bias1) / (exact_sqrt(second) / bias2_sqrt + eps)
    if DECOUPLED:
        u += weight_decay * s
    return u, m, v, v_max


@triton.jit
def recovered_anchor(x, m, v, v_max, recovery_ptr, coefficients, AMSGRAD: tl.constexpr):
    """s_t of the anchor-free past update (csrc/extrap_math.h's recovered_adaptive_anchor): x_t + r0 * x_t + r1 * a_t,
    a_t from the moments update t stored, with its bias corrections; x itself where r1 is 0 (a fresh or written
    x, where a may be 0 / 0 with eps 0)."""
    eps, last_bias1, last_bias2_sqrt = coefficients[5], coefficients[8], coefficients[9]
    second = v
    if AMSGRAD:
        second = v_max
    a = (m / last_bias1) / (exact_sqrt(second) / last_bias2_sqrt + eps)
    r0 = tl.load(recovery_ptr)
    r1 = tl.load(recovery_ptr + 1)
    return tl.where(r1 != 0, x + r0 * x + r1 * a, x)


@triton.jit
def novograd_direction(s, g, m, norm, grad_factor, coefficients, DECOUPLED: tl.constexpr):
    """Returns (u, m): NovoGrad's, from the tensor's running gradient norm after this gradient (csrc/extrap_math.h's
    novograd_direction): d = norm / bias2_sqrt + eps; decoupled (Apex's moment mode 1) u = (m / bias1) / d +
    wd * s, else g' / d + wd * s enters m and u = m / bias1."""
    weight_decay, beta1, _, _, grad_gain, eps, bias1, bias2_sqrt, _, _ = coefficients
    gp = g * grad_factor
    d = norm / bias2_sqrt + eps
    if DECOUPLED:
        m = beta1 * m + grad_gain * gp
        u = (m / bias1) / d + weight_decay * s
    else:
        m = beta1 * m + grad_gain * (gp / d + weight_decay * s)
        u = m / bias1
    return u, m


@triton.jit
def step_direction(
    s,
    g,
    m,
    v,
    v_max,
    grad_factor,
    trust,
    coefficients,
    DECOUPLED: tl.constexpr,
    MOMENTS: tl.constexpr,
    moment_random,
    MOMENT_ROUNDING: tl.constexpr,
):
    """Returns (e, m, v, v_max), csrc/extrap_math.h's adaptive_step_direction: trust * u with per-element second
    moments (16-bit ones rounded: adaptive_direction); NovoGrad's u, `trust` then being the tensor's running norm."""
    if MOMENTS == FIRST_AND_NORM:
        e, m = novograd_direction(s, g, m, trust, grad_factor, coefficients, DECOUPLED)
    else:
        u, m, v, v_max = adaptive_direction(
            s, g, m, v, v_max, grad_factor, coefficients, DECOUPLED, MOMENTS == WITH_MAX, moment_random, MOMENT_ROUNDING
        )
        e = trust * u
    return e, m, v, v_max


@triton.jit
def pointers(
    table,
    t,
    X_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    C_DTYPE: tl.constexpr,
    M_DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Tensor t's (x, g, s, m, v, v_max, step, recovery), s of S_DTYPE (C_DTYPE, or a 16-bit x's own without a
    master), the moments of M_DTYPE (C_DTYPE, or 16-bit: exp_avg_dtype) and the weights of C_DTYPE; the six arrays
    said 16-byte aligned where the bucket's are."""
    x_ptr = row_pointer(table, t, ROWS, ROW_X, X_DTYPE, ALIGNED)
    g_ptr = row_pointer(table, t, ROWS, ROW_G, X_DTYPE, ALIGNED)
    s_ptr = row_pointer(table, t, ROWS, ROW_S, S_DTYPE, ALIGNED)
    m_ptr = row_pointer(table, t, ROWS, ROW_M, M_DTYPE, ALIGNED)
    v_ptr = row_pointer(table, t, ROWS, ROW_V, M_DTYPE, ALIGNED)
    v_max_ptr = row_pointer(table, t, ROWS, ROW_V_MAX, M_DTYPE, ALIGNED)
    step_ptr = row_pointer(table, t, ROWS, ROW_STEP, tl.float32, False)
    recovery_ptr = row_pointer(table, t, ROWS, ROW_RECOVERY, C_DTYPE, False)
    return x_ptr, g_ptr, s_ptr, m_ptr, v_ptr, v_max_ptr, step_ptr, recovery_ptr


@triton.jit
def load_moments(m_ptr, v_ptr, v_max_ptr, offs, mask, MOMENTS: tl.constexpr, C_DTYPE: tl.constexpr):
    """(m, v, v_max) of the elements `offs` in C_DTYPE (16-bit moments converted; v_max zeros without amsgrad, m
    zeros without a first moment, v zeros for NovoGrad's per-tensor second moment)."""
    if MOMENTS == FIRST_AND_NORM:
        m = tl.load(m_ptr + offs, mask=mask).to(C_DTYPE)
        v = tl.zeros_like(m)
    else:
        v = tl.load(v_ptr + offs, mask=mask).to(C_DTYPE)
        m = tl.zeros_like(v)
        if MOMENTS != SUM_ONLY:
            m = tl.load(m_ptr + offs, mask=mask).to(C_DTYPE)
    v_max = tl.zeros_like(v)
    if MOMENTS == WITH_MAX:
        v_max = tl.load(v_max_ptr + offs, mask=mask).to(C_DTYPE)
    return m, v, v_max


@triton.jit
def store_moments(m_ptr, v_ptr, v_max_ptr, offs, mask, m, v, v_max, MOMENTS: tl.constexpr):
    """An update's moments, those MOMENTS keeps, stored in their arrays' type (16-bit moments were rounded to
    values of their type: exact)."""
    if MOMENTS != SUM_ONLY:
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    if MOMENTS != FIRST_AND_NORM:
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    if MOMENTS == WITH_MAX:
        tl.store(v_max_ptr + offs, v_max.to(v_max_ptr.dtype.element_ty), mask=mask)


def constants(b: Bucket, h: AdamHyper) -> dict:
    """The arguments both kernels take besides the tables, as the CPU and CUDA launchers derive them
    (launch.h); capturable betas as float64 device tensors in beta1's and beta2's place, which the kernels read."""
    (beta1, beta1_tensor), (beta2, beta2_tensor) = h.kernel_betas(b)
    averaging = h.averages
    return dict(
        weight_decay=float(h.weight_decay),
        sign=-1.0 if h.maximize else 1.0,
        beta1=beta1_tensor if beta1_tensor is not None else beta1,
        one_minus_beta2=1.0 if h.accumulates else 1.0 - beta2,  # (the gain of g'^2)
        beta2=beta2_tensor if beta2_tensor is not None else beta2,
        grad_gain=(1.0 - beta1) if averaging else 1.0,
        eps=float(h.eps),
        # (beta 0: its powers are 0 from the first step on, exp(t * -inf))
        log_beta1=math.log(beta1) if beta1 > 0 else -math.inf,
        log_beta2=math.log(beta2) if beta2 > 0 else -math.inf,
        BETA1_TENSOR=beta1_tensor is not None,
        BETA2_TENSOR=beta2_tensor is not None,
        GRAD_AVERAGING=averaging,
    )
