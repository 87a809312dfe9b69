"""NovoGrad (docs/SPEC.md "NovoGrad"): `FusedNovoGrad`, the drop-in for Apex's, and `ExtrapNovoGrad`, the same
base with extrapolation (modes local, past, noise; gamma=0 is exactly FusedNovoGrad's update, counted per
parameter). NovoGrad's second moment is one number per tensor, the running norm of its gradient: every backend blends
the norms of a bucket in one pass before its per-element kernel, which takes them where LAMB's trust ratios
go and moves x, g, s and m alone (novograd_math.running_norms)."""

from __future__ import annotations

import torch
from torch import Tensor

from .adam import ExtrapolatingAdaptive, _ApexAdaptive, check_adaptive
from .bucket import Phase
from .checks import check_hyperparameters
from .hyper import Hyper
from .state import NOVOGRAD_STATE


def check_novograd(lr, betas, eps, weight_decay, norm_type) -> None:
    """torch.optim.Adam's checks, and Apex's on the norm."""
    check_adaptive(lr, betas, eps, weight_decay)
    if norm_type not in (0, 2):
        raise RuntimeError("FusedNovoGrad only support l2/inf norm now.")


def novograd_defaults(
    lr, bias_correction, betas, eps, weight_decay, reg_inside_moment, grad_averaging, norm_type, init_zero
) -> dict:
    """The param-group options both classes share, checked."""
    check_novograd(lr, betas, eps, weight_decay, norm_type)
    return dict(
        lr=lr,
        bias_correction=bias_correction,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        reg_inside_moment=reg_inside_moment,
        grad_averaging=grad_averaging,
        norm_type=norm_type,
        init_zero=init_zero,
    )


class ExtrapNovoGrad(ExtrapolatingAdaptive):
    """NovoGrad (Apex FusedNovoGrad's arguments and defaults) with extrapolation along its direction: moment
    mode 1 (reg_inside_moment False) e = (m / (1 - b1^t)) / (norm / sqrt(1 - b2^t) + eps) + wd * s; mode 0
    e = m / (1 - b1^t), with g' / (...) + wd * s inside m. "local" looks ahead with m and the norm as if
    updated, storing neither."""

    STATE = NOVOGRAD_STATE

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reg_inside_moment: bool = False,
        grad_averaging: bool = True,
        norm_type: int = 2,
        init_zero: bool = False,
        *,
        gamma: float | Tensor | None = None,
        mode: str = "past",
        noise_std: float = 0.01,
        seed: int = 0,
        master_weights: bool = True,
        backend: str = "auto",
    ):
        defaults = novograd_defaults(
            lr, bias_correction, betas, eps, weight_decay, reg_inside_moment, grad_averaging, norm_type, init_zero
        )
        defaults.update(
            gamma=gamma,
            mode=mode,
            noise_std=noise_std,
            seed=seed,
            master_weights=master_weights,
        )
        check_hyperparameters(gamma=gamma, mode=mode, noise_std=noise_std, master_weights=master_weights)
        super().__init__(params, defaults, backend)

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        check_novograd(group["lr"], group["betas"], group["eps"], group["weight_decay"], group["norm_type"])
        phase, gamma = self._mode_phase(group)
        return phase, self.STATE.hyper.from_group(group, gamma=gamma)


class FusedNovoGrad(_ApexAdaptive):
    """Drop-in for `apex.optimizers.FusedNovoGrad`: Apex's arguments, defaults and step count (one per group).
    Apex keeps the per-tensor norms in the group (`group["exp_avg_sq"]`, its fp16 and fp32 parameters' apart);
    here each parameter's is in its state under the same name, and an Apex checkpoint's are moved there when it
    loads. bf16 parameters are taken (Apex takes fp16 and fp32), m is fp32 for 16-bit parameters (Apex's is in
    their dtype), and master_weights=True keeps an fp32 master."""

    STATE = NOVOGRAD_STATE
    _PICKLED = _ApexAdaptive._PICKLED + ("master_weights",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        reg_inside_moment: bool = False,
        grad_averaging: bool = True,
        norm_type: int = 2,
        init_zero: bool = False,
        set_grad_none: bool = True,
        *,
        master_weights: bool = False,
        backend: str = "auto",
    ):
        if amsgrad:
            raise RuntimeError("FusedNovoGrad does not support the AMSGrad variant.")
        defaults = novograd_defaults(
            lr, bias_correction, betas, eps, weight_decay, reg_inside_moment, grad_averaging, norm_type, init_zero
        )
        defaults["master_weights"] = master_weights
        check_hyperparameters(master_weights=master_weights)
        super().__init__(params, defaults, backend)
        self.set_grad_none, self.master_weights = set_grad_none, master_weights

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        check_novograd(group["lr"], group["betas"], group["eps"], group["weight_decay"], group["norm_type"])
        return Phase.UPDATE, self.STATE.hyper.from_group(group, gamma=0.0)

    def load_state_dict(self, state_dict: dict) -> None:
        """Apex's checkpoints move their group-level norms (`[fp16 norms, fp32 norms]`, in the order of the
        group's parameters of each dtype) into the parameters' states."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            norms = group.pop("exp_avg_sq", None)
            if norms is None:
                continue
            for dtype, values in zip((torch.float16, torch.float32), norms):
                params = [p for p in group["params"] if p.dtype == dtype]
                values = [] if values is None else torch.as_tensor(values).reshape(-1)
                if len(values) != len(params):
                    raise ValueError(
                        f"FusedNovoGrad: the checkpoint's group holds {len(values)} {dtype} norms for "
                        f"{len(params)} parameters of that dtype (Apex's, saved before every one had a gradient?)"
                    )
                for p, value in zip(params, values):
                    self.state[p]["exp_avg_sq"] = value.to(device=p.device, dtype=torch.float32).reshape(())
