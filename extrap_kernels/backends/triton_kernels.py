"""The `triton` backend: one Triton launch per phase covers a whole (device, dtype) bucket.

Every program handles one BLOCK of one tensor: a device table of tensor addresses and a block map
(program -> tensor, first element) are built once and cached until a parameter, gradient or state
tensor is reallocated. The per-element math mirrors csrc/extrap_math.h function for function (Triton
cannot include C++); the tests hold both to the same reference. On a machine without a GPU the kernels
run on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..bucket import Bucket, Hyper, Phase, count_step, record_gamma, state_dtype
from ..lars import trust_ratios
from ..rounding import ROUNDING_KEY

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Interpreted programs cost per program, not per element: fewer, larger blocks there.
BLOCK = 1 << 14 if INTERPRETED else 2048
_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


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
    momentum,
    dampening,
    weight_decay,
    grad_factor,
    trust,
    first,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    WD_AFTER_MOMENTUM: tl.constexpr,
):
    """Returns (s, m, d, g')."""
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
def rounding_bits(rounding_seed, step, index, element):
    """The stochastic rounding's bits: the noise's counter under the key seed ^ ROUNDING_KEY; (c0, c1, c2)."""
    r0, r1, r2, _ = philox_at(rounding_seed, step, index, element)
    return r0, r1, r2


@triton.jit
def abandon_block(
    x_ptr, s_ptr, offs, mask, PHASE: tl.constexpr, X_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, MASTER: tl.constexpr
):
    """found_inf: only keep x consistent with the abandoned iteration (bucket.abandon): the snapshot is still
    taken, and the local step's x returns to its anchor."""
    if PHASE == 0:
        if not MASTER:
            tl.store(s_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(S_DTYPE), mask=mask)
    elif PHASE == 1:
        tl.store(x_ptr + offs, tl.load(s_ptr + offs, mask=mask).to(X_DTYPE), mask=mask)


@triton.jit
def launch_values(
    lr,
    gamma,
    lr_ptr,
    gamma_ptr,
    sign,
    scale_ptr,
    trust_ptr,
    t,
    LR_TENSOR: tl.constexpr,
    GAMMA_TENSOR: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_TRUST: tl.constexpr,
    C_DTYPE: tl.constexpr,
):
    """(lr, gamma, grad_factor, trust) as the kernel runs: capturable rates read now, 1 / grad_scale (with the
    sign of maximize), and tensor t's trust ratio (1 without)."""
    if LR_TENSOR:
        lr = tl.load(lr_ptr)
    if GAMMA_TENSOR:
        gamma = tl.load(gamma_ptr)
    grad_factor = sign
    if HAS_SCALE:
        grad_factor = sign / tl.load(scale_ptr).to(C_DTYPE)
    trust = 1.0
    if HAS_TRUST:
        trust = tl.load(trust_ptr + t)
    return lr, gamma, grad_factor, trust


# ---- the multi-tensor kernel ----------------------------------------------------------------------
@triton.jit
def _phase_block(
    x_ptr,
    g_ptr,
    s_ptr,
    m_ptr,
    step_ptr,
    last_gamma_ptr,
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
    momentum,
    dampening,
    weight_decay,
    sign,
    noise_std,
    seed,
    rounding_seed,
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
    HAS_FOUND_INF: tl.constexpr,
    LR_TENSOR: tl.constexpr,
    GAMMA_TENSOR: tl.constexpr,
    C_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    """One phase over the elements `offs` of tensor `t` (`mask`: those inside it; None: all of them)."""
    skip = False
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr) != 0
    if skip:
        abandon_block(x_ptr, s_ptr, offs, mask, PHASE, X_DTYPE, S_DTYPE, MASTER)
    else:
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
        g = tl.load(g_ptr + offs, mask=mask).to(C_DTYPE)
        m = tl.zeros_like(g)
        if MOMENTUM:
            m = tl.load(m_ptr + offs, mask=mask).to(C_DTYPE)
        r_s, r_m, r_x = (
            tl.zeros_like(offs).to(tl.uint32),
            tl.zeros_like(offs).to(tl.uint32),
            tl.zeros_like(offs).to(tl.uint32),
        )
        if ROUNDING != 0:
            r_s, r_m, r_x = rounding_bits(rounding_seed, tl.load(step_ptr).to(tl.int64), index, offs)
        if PHASE == 0:  # extrapolate: s <- x; x <- s - gamma * e
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
            if PHASE == 4:  # anchor-free past: x = s - last_gamma * m gives the anchor back
                anchor = tl.load(x_ptr + offs, mask=mask) + tl.load(last_gamma_ptr) * m
            else:
                anchor = tl.load(s_ptr + offs, mask=mask).to(C_DTYPE)
            anchor, m, d, gp = base_update(
                anchor,
                m,
                g,
                lr,
                momentum,
                dampening,
                weight_decay,
                grad_factor,
                trust,
                step <= 1.0,
                MOMENTUM,
                NESTEROV,
                WD_AFTER_MOMENTUM,
            )
            anchor_stored = stochastic_round(anchor, r_s, ROUNDING)  # (as stored: the local step's x too)
            if MOMENTUM:
                tl.store(m_ptr + offs, stochastic_round(m, r_m, ROUNDING).to(S_DTYPE), mask=mask)
            if PHASE == 1:  # x <- s; a full-precision s is only the snapshot (or x itself)
                if MASTER:
                    tl.store(s_ptr + offs, anchor, mask=mask)
                tl.store(x_ptr + offs, anchor_stored.to(X_DTYPE), mask=mask)
            elif PHASE == 2 or PHASE == 4:  # past: x <- s - gamma * e (s stored unless recomputed)
                if PHASE == 2:
                    tl.store(s_ptr + offs, anchor_stored.to(S_DTYPE), mask=mask)
                if PAST_GRAD:
                    x = anchor - gamma * gp
                else:
                    x = anchor - gamma * d
                tl.store(x_ptr + offs, stochastic_round(x, r_x, ROUNDING).to(X_DTYPE), mask=mask)
            else:  # noise: x <- s + sigma * xi
                tl.store(s_ptr + offs, anchor_stored.to(S_DTYPE), mask=mask)
                xi = noise_normal(seed, step.to(tl.int64), index, offs).to(C_DTYPE)
                tl.store(x_ptr + offs, stochastic_round(anchor + noise_std * xi, r_x, ROUNDING).to(X_DTYPE), mask=mask)


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
    momentum,
    dampening,
    weight_decay,
    sign,
    noise_std,
    seed,
    rounding_seed,
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
    HAS_FOUND_INF: tl.constexpr,
    LR_TENSOR: tl.constexpr,
    GAMMA_TENSOR: tl.constexpr,
    BLOCK: tl.constexpr,
    C_DTYPE: tl.constexpr,
    ROUNDING: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    # S_DTYPE stores s and m; C_DTYPE computes (they differ for 16-bit state without a master, ROUNDING 1
    # bf16 or 2 fp16: every stored value rounded stochastically with the bits keyed by rounding_seed)
    t, offs, mask, whole = program_block(numels, block_tensor, block_start, BLOCK, ALIGNED)
    # table rows: x, g, s, m, step, last gamma (addresses), one column per tensor (m and the last gamma
    # hold placeholders where a bucket has none)
    x_ptr = tl.load(table + 6 * t + 0).to(tl.pointer_type(X_DTYPE))
    g_ptr = tl.load(table + 6 * t + 1).to(tl.pointer_type(X_DTYPE))
    s_ptr = tl.load(table + 6 * t + 2).to(tl.pointer_type(S_DTYPE))
    m_ptr = tl.load(table + 6 * t + 3).to(tl.pointer_type(S_DTYPE))
    if ALIGNED:  # every x, g, s and m of the bucket starts on 16 bytes (checked on the host): said to the
        # compiler on the pointers (it does not follow a hint on the integer address through the cast), which
        # then moves 16 bytes per access in a whole block
        x_ptr, g_ptr = tl.multiple_of(x_ptr, 16), tl.multiple_of(g_ptr, 16)
        s_ptr, m_ptr = tl.multiple_of(s_ptr, 16), tl.multiple_of(m_ptr, 16)
    step_ptr = tl.load(table + 6 * t + 4).to(tl.pointer_type(tl.float32))
    last_gamma_ptr = tl.load(table + 6 * t + 5).to(tl.pointer_type(S_DTYPE))
    index = tl.load(indices + t)
    if whole:
        _phase_block(
            x_ptr,
            g_ptr,
            s_ptr,
            m_ptr,
            step_ptr,
            last_gamma_ptr,
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
            momentum,
            dampening,
            weight_decay,
            sign,
            noise_std,
            seed,
            rounding_seed,
            PHASE,
            X_DTYPE,
            S_DTYPE,
            MASTER,
            MOMENTUM,
            NESTEROV,
            WD_AFTER_MOMENTUM,
            EXTRAPOLATE_WITH_MOMENTUM,
            PAST_GRAD,
            HAS_TRUST,
            HAS_SCALE,
            HAS_FOUND_INF,
            LR_TENSOR,
            GAMMA_TENSOR,
            C_DTYPE,
            ROUNDING,
        )
    else:
        _phase_block(
            x_ptr,
            g_ptr,
            s_ptr,
            m_ptr,
            step_ptr,
            last_gamma_ptr,
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
            momentum,
            dampening,
            weight_decay,
            sign,
            noise_std,
            seed,
            rounding_seed,
            PHASE,
            X_DTYPE,
            S_DTYPE,
            MASTER,
            MOMENTUM,
            NESTEROV,
            WD_AFTER_MOMENTUM,
            EXTRAPOLATE_WITH_MOMENTUM,
            PAST_GRAD,
            HAS_TRUST,
            HAS_SCALE,
            HAS_FOUND_INF,
            LR_TENSOR,
            GAMMA_TENSOR,
            C_DTYPE,
            ROUNDING,
        )


# ---- tables, cached -------------------------------------------------------------------------------
_TABLES: OrderedDict = OrderedDict()
_MAX_TABLES = 64


def _tables(b: Bucket, columns: tuple | None = None, streamed: int = 4):
    """(address table, numels, indices, block->tensor, block->first element, tensor->first block (one more
    entry: the total), number of blocks, whether every tensor of the first `streamed` columns starts on 16
    bytes). `columns`: the tensor lists whose addresses the table holds, one row per tensor; by default the
    SGD family's x, g, s, m, step, last gamma."""
    # placeholder columns where there is no momentum or no last gamma (never read then)
    if columns is None:
        columns = (b.params, b.grads, b.anchors, b.momenta or b.anchors, b.steps, b.last_gammas or b.steps)
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


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    if h.base != "sgd":  # Adam, AdamW, LAMB
        from .triton_adaptive import apply_adaptive

        return apply_adaptive(phase, b, h, grad_scale, found_inf)
    count_step(phase, b, found_inf)
    table, numels, indices, block_tensor, block_start, _, total, aligned = _tables(b)
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    if total == 0:
        record_gamma(phase, b, gamma_tensor if gamma_tensor is not None else gamma, found_inf)
        return
    trust = trust_ratios(phase, b, h, grad_scale) if h.lars else None
    dummy = numels  # any device tensor, for pointer arguments that a constexpr switches off
    seed = int(h.seed) & 0xFFFFFFFFFFFFFFFF
    rounding_mode = {torch.bfloat16: 1, torch.float16: 2}[b.dtype] if b.rounds_stochastically else 0
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
        float(h.momentum),
        float(h.dampening),
        float(h.weight_decay),
        -1.0 if h.maximize else 1.0,
        float(h.noise_std),
        seed,
        seed ^ ROUNDING_KEY,
        PHASE=int(phase),
        X_DTYPE=_DTYPES[b.dtype],
        S_DTYPE=_DTYPES[b.storage_dtype],
        C_DTYPE=_DTYPES[state_dtype(b.dtype)],
        ROUNDING=rounding_mode,
        MASTER=b.has_master,
        MOMENTUM=bool(b.momenta),
        NESTEROV=bool(h.nesterov),
        WD_AFTER_MOMENTUM=bool(h.wd_after_momentum),
        EXTRAPOLATE_WITH_MOMENTUM=bool(h.extrapolate_with_momentum),
        PAST_GRAD=bool(h.past_grad),
        HAS_TRUST=trust is not None,
        HAS_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        LR_TENSOR=lr_tensor is not None,
        GAMMA_TENSOR=gamma_tensor is not None,
        BLOCK=BLOCK,
        ALIGNED=aligned,
    )
    record_gamma(phase, b, gamma_tensor if gamma_tensor is not None else gamma, found_inf)
