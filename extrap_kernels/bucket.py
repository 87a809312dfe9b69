"""What every backend is handed: a phase, the hyperparameters of a param group (hyper.py), and one
bucket of tensors sharing a device and a dtype. The backends (reference, foreach, cpu, ...) differ only in how
they run one phase over one bucket."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

# Parameter dtypes with a kernel; their state is fp32 (fp64 for fp64 parameters).
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# The 16-bit ones: a parameter without a master, or 16-bit moments, stored rounded stochastically.
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class Phase(enum.IntEnum):
    """One pass over memory; the values are csrc/extrap_math.h's `Phase`."""

    EXTRAPOLATE = 0  # two-phase, step 2: s <- x; x <- s - gamma * e(g)
    UPDATE = 1  # two-phase, step 4 (and plain fused SGD): base update of s; x <- s
    UPDATE_PAST = 2  # one-phase "past": base update of s; x <- s - gamma * e
    UPDATE_NOISE = 3  # one-phase "noise": base update of s; x <- s + sigma * xi
    # one-phase "past" without a stored anchor (heavy-ball momentum or the Adam family; full precision, or 16-bit
    # without a master): the anchor is recomputed as s = x + last_gamma * m; base update of s; x <- s - gamma * m
    UPDATE_PAST_ANCHOR_FREE = 4


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """fp32 state always (the master anchor of a 16-bit parameter too); fp64 for fp64 parameters; a
    complex parameter keeps complex state of its own precision (the kernels see its real view)."""
    if param_dtype.is_complex:
        return param_dtype
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def moment_dtype_for(param_dtype: torch.dtype, wanted: torch.dtype | None) -> torch.dtype:
    """The dtype the adaptive bases' moments of a `param_dtype` parameter are held in: `wanted` (the group's
    exp_avg_dtype) where it is 16-bit and the arithmetic fp32, else the state dtype."""
    sdtype = state_dtype(param_dtype)
    return wanted if wanted in SIXTEEN_BIT and sdtype == torch.float32 else sdtype


def bucket_phase(phase: Phase, dtype: torch.dtype, master: bool = True) -> Phase:
    """The phase a group's bucket of `dtype` runs: a 16-bit x with a master (`master`: the group's
    master_weights) keeps its fp32 master as the anchor, so an anchor-free group runs the stored-anchor past
    update there; without one the anchor is recovered from the 16-bit x itself (x rounded stochastically), and with
    a compensated one from x's fp32 value (compensation.py)."""
    if phase == Phase.UPDATE_PAST_ANCHOR_FREE and master not in (False, "compensated") and state_dtype(dtype) != dtype:
        return Phase.UPDATE_PAST
    return phase


@dataclass
class Bucket:
    """The tensors of one (device, dtype) group. Lists are parallel; `anchors[i]` is `params[i]` itself
    when there is no separate anchor (plain fused SGD on full-precision parameters)."""

    params: list[Tensor]
    grads: list[Tensor]
    anchors: list[Tensor]
    momenta: list[Tensor]  # empty when momentum == 0
    steps: list[Tensor]  # 0-dim float32 update counts; an update phase counts its own update first
    indices: list[int]  # position of each parameter in the optimizer: keys the noise
    names: list[str] = field(default_factory=list)  # for error messages
    # UPDATE_PAST_ANCHOR_FREE: the gamma each x was last extrapolated with (0-dim, state dtype)
    last_gammas: list[Tensor] = field(default_factory=list)
    # False: 16-bit parameters keep s (and the SGD family's m) in their own dtype, each stored value rounded
    # stochastically
    master: bool = True
    shard_group: object = None  # FSDP2 + LARS: the process group whole-tensor norms are summed over
    # Adam and LAMB: the second moments v (exp_avg_sq), and their running maxima with amsgrad
    second_moments: list[Tensor] = field(default_factory=list)
    max_second_moments: list[Tensor] = field(default_factory=list)
    # LAMB with max_grad_norm: the norm of all the step's gradients (still scaled), set per step
    global_grad_norm: Tensor | None = None
    # NovoGrad: each tensor's running gradient norm (0-dim, state dtype; Apex's per-tensor "exp_avg_sq")
    grad_norms: list[Tensor] = field(default_factory=list)
    # The group's exp_avg_dtype (Adam, AdamW, LAMB): 16-bit, the moments are stored in it, each stored value
    # rounded stochastically (moment_dtype)
    moment_storage: torch.dtype | None = None
    # master_weights="compensated": each bf16 x's remainder, the 16 low bits of its fp32 value (compensation.py);
    # the phase runs on the joined fp32 values, x its own anchor
    remainders: list[Tensor] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of the stored anchor and momentum (the arithmetic is always in state_dtype's)."""
        return state_dtype(self.dtype) if self.master else self.dtype

    @property
    def moment_dtype(self) -> torch.dtype:
        """The dtype of the momenta and moments: the anchor's for the SGD family; fp32 (fp64) for the adaptive
        bases' moments (NovoGrad's m too) whatever the master, as Apex's FusedAdam keeps them, or the 16-bit
        moment_storage of Adam, AdamW and LAMB."""
        if self.second_moments:
            return moment_dtype_for(self.dtype, self.moment_storage)
        return state_dtype(self.dtype) if self.grad_norms else self.storage_dtype

    @property
    def rounds_moments(self) -> bool:
        """The adaptive bases' moments are 16-bit: an update rounds each stored value stochastically."""
        return bool(self.second_moments) and self.moment_dtype in SIXTEEN_BIT

    @property
    def has_master(self) -> bool:
        """16-bit parameters keep their anchor as a separate fp32 master copy (unless master=False)."""
        return self.storage_dtype != self.dtype

    @property
    def rounds_stochastically(self) -> bool:
        return self.storage_dtype != state_dtype(self.dtype)

    def anchor_values(self, phase: Phase) -> list[Tensor]:
        """The tensors holding x_t when `phase` starts: before a full-precision snapshot it is x itself."""
        if phase == Phase.EXTRAPOLATE and not self.has_master:
            return self.params
        return self.anchors


def abandon(phase: Phase, bucket: Bucket) -> None:
    """found_inf is set: anchor, momentum and step stay as they are. Only x is kept consistent with the
    abandoned iteration: the snapshot is still taken, and an extrapolated x returns to its anchor."""
    if phase == Phase.EXTRAPOLATE and not bucket.has_master:
        torch._foreach_copy_(bucket.anchors, bucket.params)
    elif phase == Phase.UPDATE:
        torch._foreach_copy_(bucket.params, bucket.anchors)


def record_gamma(phase: Phase, bucket: Bucket, gamma: float | Tensor, found_inf: Tensor | None) -> None:
    """After an anchor-free past update: x was extrapolated with `gamma`, which the next update reads to
    recompute the anchor. A skipped update (found_inf) left x, and so the gamma it was made with, as it
    was. Device tensors only: no host sync (the extension's operators do the same in C++)."""
    if phase != Phase.UPDATE_PAST_ANCHOR_FREE or not bucket.last_gammas:
        return
    olds = bucket.last_gammas
    gamma = torch.as_tensor(gamma, dtype=olds[0].dtype).to(olds[0].device).reshape(())
    if found_inf is None:
        torch._foreach_copy_(olds, [gamma] * len(olds))
    else:
        kept = torch.where(found_inf.reshape(()) != 0, torch.stack(olds), gamma)
        torch._foreach_copy_(olds, list(kept.unbind()))


def count_step(phase: Phase, bucket: Bucket, found_inf: Tensor | None) -> None:
    """An update phase counts its update before the math reads the count (the first-step flag, the
    noise key); a skipped one (found_inf set) is not counted. Device tensors only: no host sync. The
    extension's operators do the same in C++."""
    if phase == Phase.EXTRAPOLATE or not bucket.steps:
        return
    if found_inf is None:
        torch._foreach_add_(bucket.steps, 1.0)
    else:
        torch._foreach_add_(bucket.steps, found_inf.reshape(()).eq(0).to(torch.float32))


def unscale_grads(bucket: Bucket, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    """After a phase given AMP's grad_scale: the gradients written back unscaled, g <- g / grad_scale, as
    torch's fused optimizers and this package's kernels leave them; a skipped step (found_inf set) leaves
    them as they were. The host backends' form (they read found_inf on the host already)."""
    if grad_scale is None or not bucket.grads or (found_inf is not None and found_inf.item() != 0):
        return
    torch._foreach_mul_(bucket.grads, 1.0 / grad_scale.item())
