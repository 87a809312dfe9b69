"""What every backend is handed: a phase, the hyperparameters of a param group, and one bucket of
tensors sharing a device and a dtype. The backends (reference, foreach, cpu, ...) differ only in how
they run one phase over one bucket."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

# Parameter dtypes with a kernel; their state is fp32 (fp64 for fp64 parameters).
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class Phase(enum.IntEnum):
    """One pass over memory; the values are csrc/extrap_math.h's `Phase`."""

    EXTRAPOLATE = 0  # two-phase, step 2: s <- x; x <- s - gamma * e(g)
    UPDATE = 1  # two-phase, step 4 (and plain fused SGD): base update of s; x <- s
    UPDATE_PAST = 2  # one-phase "past": base update of s; x <- s - gamma * e
    UPDATE_NOISE = 3  # one-phase "noise": base update of s; x <- s + sigma * xi
    # one-phase "past" without a stored anchor (heavy-ball momentum, full precision): the anchor is
    # recomputed as s = x + last_gamma * m; base update of s; x <- s - gamma * m
    UPDATE_PAST_ANCHOR_FREE = 4


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """fp32 state always (the master anchor of a 16-bit parameter too); fp64 for fp64 parameters; a
    complex parameter keeps complex state of its own precision (the kernels see its real view)."""
    if param_dtype.is_complex:
        return param_dtype
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def anchor_free_applies(hyper: "Hyper") -> bool:
    """SPEC "Memory-lean variants": with heavy-ball momentum (no Nesterov, no Apex wd_after_momentum, no
    LARS) and past="update", the update direction d is m, so x = s - gamma * m gives the anchor back and
    it need not be stored (on full-precision parameters: see bucket_phase)."""
    return (
        hyper.momentum != 0
        and not hyper.nesterov
        and not hyper.wd_after_momentum
        and not hyper.lars
        and not hyper.past_grad
    )


def bucket_phase(phase: Phase, dtype: torch.dtype) -> Phase:
    """The phase a group's bucket of `dtype` runs: a 16-bit x keeps its fp32 master as the anchor, so
    an anchor-free group runs the stored-anchor past update there."""
    if phase == Phase.UPDATE_PAST_ANCHOR_FREE and state_dtype(dtype) != dtype:
        return Phase.UPDATE_PAST
    return phase


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters of one param group for one phase, as docs/SPEC.md names them."""

    lr: float | Tensor
    gamma: float | Tensor = 0.0
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False
    wd_after_momentum: bool = False  # Apex FusedSGD: weight decay added to d, not to g
    lars: bool = False
    trust_coefficient: float = 0.001
    lars_clip: bool = False
    extrapolate_with_momentum: bool = False
    past_grad: bool = False  # "past" mode extrapolates along g' instead of d
    noise_std: float = 0.0
    seed: int = 0
    # SPEC "Base update, Adam family and LAMB": base "adam" or "lamb" (momentum is then 0; the bucket's
    # momenta are the first moments m and second_moments the v)
    base: str = "sgd"
    betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999)  # (tensors: capturable, read by the kernels)
    eps: float = 1e-8
    decoupled: bool = False  # AdamW / adam_w_mode: e = a + wd * s instead of g' += wd * s
    amsgrad: bool = False
    bias_correction: bool = True
    grad_averaging: bool = True  # LAMB: m <- b1 * m + (1 - b1) * g' (False: + g')
    max_grad_norm: float = 0.0  # LAMB: g' / max(1, ||g||_global / max_grad_norm); 0: no clipping
    use_nvlamb: bool = False  # LAMB: the trust ratio also where wd == 0

    def layout(self) -> tuple:
        """What decides the state a phase keeps: a change of it plans the step anew."""
        return self.base, self.momentum != 0, self.lars, self.amsgrad

    def rate(self, name: str, bucket: "Bucket") -> tuple[float, Tensor | None]:
        """`lr` or `gamma` as a fused kernel takes it: a number, or (capturable) a one-element tensor of
        the bucket's state dtype on its device, which the kernel reads when it runs. Reading a device
        tensor's value here would synchronize the host and freeze the value into a captured graph."""
        value = getattr(self, name)
        if not isinstance(value, Tensor):
            return float(value), None
        return 0.0, value.detach().to(device=bucket.device, dtype=state_dtype(bucket.dtype)).reshape(1)

    def kernel_betas(self, bucket: "Bucket") -> tuple[tuple[float, Tensor | None], tuple[float, Tensor | None]]:
        """The adaptive bases' betas as a fused kernel takes them, as `rate` does lr: each a number, or
        (capturable) a one-element float64 tensor on the bucket's device (the bias corrections' precision)."""
        return tuple(
            (0.0, beta.detach().to(device=bucket.device, dtype=torch.float64).reshape(1))
            if isinstance(beta, Tensor)
            else (float(beta), None)
            for beta in self.betas
        )


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
    # False: 16-bit parameters keep s and m in their own dtype, each stored value rounded stochastically
    master: bool = True
    shard_group: object = None  # FSDP2 + LARS: the process group whole-tensor norms are summed over
    # Adam and LAMB: the second moments v (exp_avg_sq), and their running maxima with amsgrad
    second_moments: list[Tensor] = field(default_factory=list)
    max_second_moments: list[Tensor] = field(default_factory=list)
    # LAMB with max_grad_norm: the norm of all the step's gradients (still scaled), set per step
    global_grad_norm: Tensor | None = None

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
