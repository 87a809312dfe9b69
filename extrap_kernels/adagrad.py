"""Adagrad (docs/SPEC.md "Adagrad"): `ExtrapAdagrad`, torch.optim.Adagrad with extrapolation (modes local,
past, noise; gamma=0 is exactly Adagrad), and `FusedAdagrad`, the drop-in for Apex's. Adagrad is the adaptive
form with no first moment (hyper.AdagradHyper): the kernels are the Adam family's, and so are the iteration,
the cached plan and the backends; these classes say only which options a group has."""

from __future__ import annotations

from torch import Tensor

from .adam import ExtrapolatingAdaptive
from .bucket import Phase
from .checks import check_hyperparameters, scalar_value
from .hyper import Hyper
from .optimizer import ApexDropIn
from .state import ADAGRAD_STATE


def check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps) -> None:
    """torch.optim.Adagrad's checks, in its words."""
    check_hyperparameters(lr=lr, weight_decay=weight_decay)
    for name, value in (
        ("lr_decay", lr_decay),
        ("initial_accumulator_value", initial_accumulator_value),
        ("epsilon", eps),
    ):
        number = scalar_value(value, name)
        if number is not None and not number >= 0.0:
            raise ValueError(f"Invalid {name} value: {value}")


class ExtrapAdagrad(ExtrapolatingAdaptive):
    """Adagrad (torch.optim.Adagrad's arguments and defaults) with extrapolation: the direction is
    g' / (sqrt(sum) + eps) over 1 + (t - 1) * lr_decay, and the modes extrapolate along it as ExtrapAdam's
    do along Adam's ("local" looks ahead with the sum as if updated, the state read only)."""

    STATE = ADAGRAD_STATE

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        gamma: float | Tensor | None = None,
        mode: str = "past",
        noise_std: float = 0.01,
        seed: int = 0,
        master_weights: bool = True,
        backend: str = "auto",
    ):
        check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            maximize=maximize,
            gamma=gamma,
            mode=mode,
            noise_std=noise_std,
            seed=seed,
            master_weights=master_weights,
        )
        check_hyperparameters(gamma=gamma, mode=mode, noise_std=noise_std, master_weights=master_weights)
        super().__init__(params, defaults, backend)

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        check_adagrad(group["lr"], group["lr_decay"], group["weight_decay"], 0.0, group["eps"])
        phase, gamma = self._mode_phase(group)
        return phase, self.STATE.hyper.from_group(group, gamma=gamma)


class FusedAdagrad(ApexDropIn):
    """Drop-in for `apex.optimizers.FusedAdagrad`: Adagrad in one pass per step, L2 weight decay added to the
    gradient, or with adagrad_w_mode=True decoupled (p -= lr * (g / (sqrt(sum) + eps) + wd * p)). Apex keeps
    no step count and no master; here the sum is fp32 for 16-bit parameters too (Apex's is in the
    parameter's dtype, where a sum of squares saturates), bf16 parameters are taken (Apex refuses them), and
    master_weights=True keeps an fp32 master of a 16-bit parameter. Without one its stored value is rounded
    stochastically, so that updates below half its spacing are kept on average."""

    STATE = ADAGRAD_STATE
    _PICKLED = ApexDropIn._PICKLED + ("master_weights",)

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        set_grad_none: bool = True,
        adagrad_w_mode: bool = False,
        *,
        master_weights: bool = False,
        backend: str = "auto",
    ):
        check_adagrad(lr, 0.0, weight_decay, 0.0, eps)
        check_hyperparameters(master_weights=master_weights)
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, decoupled=adagrad_w_mode)
        defaults["master_weights"] = master_weights
        super().__init__(params, defaults, backend)
        self.set_grad_none, self.master_weights = set_grad_none, master_weights

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        check_adagrad(group["lr"], 0.0, group["weight_decay"], 0.0, group["eps"])
        return Phase.UPDATE, self.STATE.hyper.from_group(group, gamma=0.0)
