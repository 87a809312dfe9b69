"""The hyperparameters of one param group for one phase, as docs/SPEC.md names them: one typed record per
base optimizer, each holding only its own options and answering, for its base, what the layers above ask
(which state it keeps, which per-step reductions it needs, the operator's keyword arguments).

A base is described here once. The backends dispatch on `Hyper.base` once, to their own form of it (a
table per backend), and ask the record the rest: no layer switches on the base's name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor

from .bucket import Bucket, state_dtype


def _as_int64(seed: int) -> int:
    """The seed's 64 bits as the signed integer the operators take."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed - 2**64 if seed >= 2**63 else seed


def _device_value(value: Tensor, bucket: Bucket, dtype: torch.dtype) -> Tensor:
    return value.detach().to(device=bucket.device, dtype=dtype).reshape(1)


@dataclass(frozen=True)
class Hyper:
    """What every base has: the rates, weight decay, the sign of the objective and the noise."""

    base: ClassVar[str]

    lr: float | Tensor
    gamma: float | Tensor = 0.0
    weight_decay: float = 0.0
    maximize: bool = False
    noise_std: float = 0.0
    seed: int = 0

    # What the layers above ask; each base answers for itself.
    lars: ClassVar[bool] = False  # SGD's per-tensor trust ratios from ||s|| and ||g||
    clips: ClassVar[bool] = False  # needs the norm of all the step's gradients (LAMB's max_grad_norm)
    scales_by_trust: ClassVar[bool] = False  # LAMB's per-tensor ||s|| / ||u||
    blends_grad_norms: ClassVar[bool] = False  # NovoGrad's per-tensor running gradient norms, blended each step
    # the prefix of its family's extension operators (csrc/operator_args.h): "" update_, "adam_" adam_update_
    operator_prefix: ClassVar[str] = ""

    @classmethod
    def from_group(cls, group: dict, **values) -> "Hyper":
        """The record of a param group whose keys are the fields' names (`values` override them)."""
        picked = {f.name: group[f.name] for f in fields(cls) if f.name in group}
        return cls(**{**picked, **values})

    @property
    def whole_tensor_norms(self) -> bool:
        """Reads norms of whole tensors (a sharded bucket then needs its shard group)."""
        return self.lars or self.scales_by_trust

    def layout(self) -> tuple:
        """What decides the state a phase keeps: a change of it plans the step anew."""
        return (self.base,)

    def anchor_free(self) -> bool:
        """The anchor can be recomputed from x and the state (SPEC "Memory-lean variants")."""
        return False

    def rate(self, name: str, bucket: Bucket) -> tuple[float, Tensor | None]:
        """`lr` or `gamma` as a fused kernel takes it: a number, or (capturable) a one-element tensor of
        the bucket's state dtype on its device, which the kernel reads when it runs. Reading a device
        tensor's value here would synchronize the host and freeze the value into a captured graph."""
        value = getattr(self, name)
        if not isinstance(value, Tensor):
            return float(value), None
        return 0.0, _device_value(value, bucket, state_dtype(bucket.dtype))

    def device_values(self, bucket: Bucket) -> list[tuple[Tensor, Tensor]]:
        """Each tensor hyperparameter and the copy a kernel reads (the same tensor where no conversion was
        needed): a prepared call holding a copy must be prepared anew each step, to read the value."""
        tensors = [name for name in ("lr", "gamma") if isinstance(getattr(self, name), Tensor)]
        return [(getattr(self, name), self.rate(name, bucket)[1]) for name in tensors]

    def operator_kwargs(self, bucket: Bucket) -> dict:
        """The extension operator's keyword arguments for these hyperparameters (csrc/operator_args.h)."""
        (lr, lr_tensor), (gamma, gamma_tensor) = self.rate("lr", bucket), self.rate("gamma", bucket)
        return dict(
            lr=lr,
            gamma=gamma,
            lr_tensor=lr_tensor,
            gamma_tensor=gamma_tensor,
            weight_decay=float(self.weight_decay),
            maximize=bool(self.maximize),
            noise_std=float(self.noise_std),
            seed=_as_int64(self.seed),
        )


@dataclass(frozen=True)
class SGDHyper(Hyper):
    """SGD and its variants: momentum, Nesterov, Apex FusedSGD's wd_after_momentum, LARS."""

    base: ClassVar[str] = "sgd"

    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    wd_after_momentum: bool = False  # Apex FusedSGD: weight decay added to d, not to g
    lars: bool = False
    trust_coefficient: float = 0.001
    lars_clip: bool = False
    extrapolate_with_momentum: bool = False
    past_grad: bool = False  # "past" mode extrapolates along g' instead of d

    def layout(self) -> tuple:
        return self.base, self.momentum != 0, self.lars

    def anchor_free(self) -> bool:
        """With heavy-ball momentum (no Nesterov, no Apex wd_after_momentum, no LARS) and past="update", the
        update direction d is m, so x = s - gamma * m gives the anchor back and it need not be stored (on
        full-precision parameters, or 16-bit ones without a master: bucket.bucket_phase)."""
        return (
            self.momentum != 0
            and not self.nesterov
            and not self.wd_after_momentum
            and not self.lars
            and not self.past_grad
        )

    def operator_kwargs(self, bucket: Bucket) -> dict:
        return dict(
            super().operator_kwargs(bucket),
            momentum=float(self.momentum),
            dampening=float(self.dampening),
            nesterov=bool(self.nesterov),
            wd_after_momentum=bool(self.wd_after_momentum),
            extrapolate_with_momentum=bool(self.extrapolate_with_momentum),
            past_grad=bool(self.past_grad),
        )


@dataclass(frozen=True)
class AdamHyper(Hyper):
    """Adam and AdamW (SPEC "Base update, Adam family and LAMB"); the bucket's momenta are the first moments
    m and its second_moments the v."""

    base: ClassVar[str] = "adam"
    operator_prefix: ClassVar[str] = "adam_"
    # Adagrad (AdagradHyper): no first moment (m = g'), v accumulates g'^2, and lr_decay divides the direction
    accumulates: ClassVar[bool] = False
    lr_decay: ClassVar[float] = 0.0

    betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999)  # (tensors: capturable, read by the kernels)
    eps: float = 1e-8
    decoupled: bool = False  # AdamW / adam_w_mode: e = a + wd * s instead of g' += wd * s
    amsgrad: bool = False
    bias_correction: bool = True
    # 16-bit moments (Transformer Engine's exp_avg_dtype; exp_avg_sq_dtype is the same): m, v and v_max stored
    # in it, rounded stochastically (SPEC "16-bit optimizer state, adaptive bases")
    exp_avg_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # (a checkpoint's groups hold lists)

    @property
    def averages(self) -> bool:
        """m <- b1 * m + (1 - b1) * g' (False: + g', LAMB without grad_averaging)."""
        return True

    @property
    def second_gain(self) -> float | Tensor:
        """The weight of g'^2 in v <- b2 * v + second_gain * g'^2: 1 - b2 (Adagrad: 1, with b2 = 1)."""
        return 1.0 if self.accumulates else 1 - self.betas[1]

    def layout(self) -> tuple:
        return self.base, self.amsgrad, self.exp_avg_dtype

    def anchor_free(self) -> bool:
        """Adam's, AdamW's and LAMB's past direction comes back from the stored moments, so x, they and the last
        update's weights (LAMB's with its trust ratio folded in) give the anchor back (recovery.py; on
        full-precision parameters, or 16-bit ones without a master: bucket.bucket_phase). Adagrad's would need the
        last gradient, NovoGrad's its last norm: not yet."""
        return self.base in ("adam", "lamb")

    def kernel_betas(self, bucket: Bucket) -> tuple[tuple[float, Tensor | None], tuple[float, Tensor | None]]:
        """The betas as a fused kernel takes them, as `rate` does lr: each a number, or (capturable) a
        one-element float64 tensor on the bucket's device (the bias corrections' precision)."""
        return tuple(
            (0.0, _device_value(beta, bucket, torch.float64)) if isinstance(beta, Tensor) else (float(beta), None)
            for beta in self.betas
        )

    def device_values(self, bucket: Bucket) -> list[tuple[Tensor, Tensor]]:
        betas = [(beta, converted) for beta, (_, converted) in zip(self.betas, self.kernel_betas(bucket))]
        return super().device_values(bucket) + [(beta, converted) for beta, converted in betas if converted is not None]

    def operator_kwargs(self, bucket: Bucket) -> dict:
        (beta1, beta1_tensor), (beta2, beta2_tensor) = self.kernel_betas(bucket)
        return dict(
            super().operator_kwargs(bucket),
            second_moments=bucket.second_moments,
            max_second_moments=bucket.max_second_moments,
            beta1=beta1,
            beta2=beta2,
            beta1_tensor=beta1_tensor,
            beta2_tensor=beta2_tensor,
            eps=float(self.eps),
            decoupled=bool(self.decoupled),
            grad_averaging=self.averages,
            bias_correction=bool(self.bias_correction),
            accumulates=self.accumulates,
            lr_decay=float(self.lr_decay),
        )


@dataclass(frozen=True)
class LambHyper(AdamHyper):
    """LAMB (Apex FusedLAMB's options): Adam's direction, clipped gradients, a per-tensor trust ratio."""

    base: ClassVar[str] = "lamb"

    grad_averaging: bool = True  # m <- b1 * m + (1 - b1) * g' (False: + g')
    max_grad_norm: float = 0.0  # g' / max(1, ||g||_global / max_grad_norm); 0: no clipping
    use_nvlamb: bool = False  # the trust ratio also where wd == 0

    @property
    def averages(self) -> bool:
        return bool(self.grad_averaging)

    @property
    def clips(self) -> bool:
        return self.max_grad_norm > 0

    @property
    def scales_by_trust(self) -> bool:
        """LAMB scales the direction by the trust ratio where weight decay is on, or always with use_nvlamb."""
        return self.weight_decay != 0 or self.use_nvlamb

    @property
    def whole_tensor_norms(self) -> bool:
        return True  # (whether or not the trust ratio is on: the shard group is the bucket's either way)


@dataclass(frozen=True)
class AdagradHyper(AdamHyper):
    """Adagrad (torch.optim.Adagrad's options; adagrad_w_mode, Apex FusedAdagrad's, is `decoupled`) as the
    adaptive form with no first moment: m = g' (beta1 0), v <- v + g'^2 (its "sum": beta2 and the gain 1),
    a = g' / (sqrt(v) + eps), divided by 1 + (t - 1) * lr_decay; no bias correction, no amsgrad."""

    base: ClassVar[str] = "adagrad"
    accumulates: ClassVar[bool] = True

    betas: tuple[float, float] = (0.0, 1.0)  # (fixed: what Adagrad is in the adaptive form)
    eps: float = 1e-10
    bias_correction: bool = False
    lr_decay: float = 0.0

    def layout(self) -> tuple:
        return (self.base,)


@dataclass(frozen=True)
class NovoGradHyper(AdamHyper):
    """NovoGrad (Apex FusedNovoGrad's options, SPEC "NovoGrad"): Adam's first moment over a per-tensor second
    moment, the running norm of each tensor's gradient (L2, or norm_type 0: L-inf), which the fused backends blend
    before their launch (novograd_math.running_norms) and pass where LAMB's ratios go. Apex's moment mode 1
    (reg_inside_moment False) decays outside the moment, as AdamW: `decoupled` follows it."""

    base: ClassVar[str] = "novograd"
    blends_grad_norms: ClassVar[bool] = True

    grad_averaging: bool = True  # m <- b1 * m + (1 - b1) * g' (False: + g')
    reg_inside_moment: bool = False  # Apex's moment mode 0: g' / (norm + eps) + wd * s enters m
    norm_type: int = 2  # 2: L2, 0: L-inf
    init_zero: bool = False  # the norm starts at 0 (False: at the first step's norm)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "decoupled", not self.reg_inside_moment)

    @property
    def averages(self) -> bool:
        return bool(self.grad_averaging)

    @property
    def whole_tensor_norms(self) -> bool:
        return True

    def layout(self) -> tuple:
        return (self.base,)

    def operator_kwargs(self, bucket: Bucket) -> dict:
        return dict(super().operator_kwargs(bucket), tensor_norms=True)


# The records by base name (Hyper.base), for code that builds one from a name.
HYPERS: dict[str, type[Hyper]] = {
    cls.base: cls for cls in (SGDHyper, AdamHyper, LambHyper, AdagradHyper, NovoGradHyper)
}
