"""The adaptive optimizer classes (docs/SPEC.md "Base update, Adam family and LAMB"): `ExtrapAdam`,
`ExtrapAdamW` and `ExtrapLAMB`, which extrapolate as ExtrapSGD does (modes local, past, noise; gamma=0
is the base optimizer), and the Apex drop-ins `FusedAdam` and `FusedLAMB`. As thin as ExtrapSGD: each
says which phase a group runs with which hyperparameters and which state it keeps; the iteration, the
cached plan and the backends are shared. (Kernels: csrc/extrap_math.h's adaptive_element on `cpu` and
`cuda`, backends/triton_adaptive.py on `triton`.)"""

from __future__ import annotations

import torch
from torch import Tensor

from . import compensation, group_step
from .bucket import Phase
from .checks import check_hyperparameters, check_moment_dtypes, scalar_value
from .hyper import Hyper
from .optimizer import ApexDropIn, ExtrapolatingOptimizer
from .state import ADAM_STATE, LAMB_STATE


def check_adaptive(lr, betas, eps, weight_decay) -> None:
    """torch.optim.Adam's checks, in its words."""
    check_hyperparameters(lr=lr, weight_decay=weight_decay)
    number = scalar_value(eps, "eps")
    if number is not None and not number >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (a pair (beta1, beta2))")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        number = scalar_value(beta, "beta")  # (None: a device tensor, read by the kernels)
        if number is not None and not 0.0 <= number < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")


def check_group_moments(group: dict) -> None:
    """A param group's moment dtypes (set by the class, or by the user in the group)."""
    check_moment_dtypes(group.get("exp_avg_dtype", torch.float32), group.get("exp_avg_sq_dtype", torch.float32))


class ExtrapolatingAdaptive(ExtrapolatingOptimizer):
    """The adaptive bases with extrapolation: the phase of each group's mode (ExtrapolatingOptimizer), the
    moments and the anchor of the base (state.AdaptiveState)."""

    STATE = ADAM_STATE

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        check_adaptive(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        check_group_moments(group)
        phase, gamma = self._mode_phase(group)
        hyper = self.STATE.hyper.from_group(group, gamma=gamma)  # (the group's keys are its fields)
        if group["mode"] == "past" and not group.get("store_anchor", True) and hyper.anchor_free():
            phase = Phase.UPDATE_PAST_ANCHOR_FREE  # (16-bit ones keep a master there: bucket_phase)
        return phase, hyper


class ExtrapAdam(ExtrapolatingAdaptive):
    """Adam (torch.optim.Adam's arguments and defaults) with extrapolation: mode="past" (default)
    extrapolates along the direction of the update just applied, "local" is the two-phase EXTRAP
    iteration with the look-ahead direction (the moments as if updated, the state read only), "noise"
    perturbs around the anchor. gamma=None follows the group's lr; gamma=0 is exactly Adam.
    decoupled_weight_decay=True is AdamW. On fp32/fp64 parameters, and on 16-bit ones with master_weights=False,
    mode="past" keeps no anchor: it is recovered from x, the moments and the last update's weights (state
    "recovery", recovery.py), so the optimizer needs torch.optim.Adam's memory and traffic; store_anchor=True keeps
    it in the state anyway ("anchor"); checkpoints of either kind load into the other. exp_avg_dtype =
    exp_avg_sq_dtype = torch.bfloat16 (or float16; Transformer Engine's names) stores the moments in 16 bits, each
    rounded stochastically before the step reads it (docs/SPEC.md: 4 bytes of state per fp32 element in mode
    "past"; 4 with a bf16 parameter without a master)."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        gamma: float | Tensor | None = None,
        mode: str = "past",
        noise_std: float = 0.01,
        seed: int = 0,
        store_anchor: bool = False,
        master_weights: bool | str = True,
        exp_avg_dtype: torch.dtype = torch.float32,
        exp_avg_sq_dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ):
        check_adaptive(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled=decoupled_weight_decay,
            gamma=gamma,
            mode=mode,
            noise_std=noise_std,
            seed=seed,
            store_anchor=store_anchor,
            master_weights=master_weights,
            exp_avg_dtype=exp_avg_dtype,
            exp_avg_sq_dtype=exp_avg_sq_dtype,
        )
        check_hyperparameters(gamma=gamma, mode=mode, noise_std=noise_std, master_weights=master_weights)
        check_moment_dtypes(exp_avg_dtype, exp_avg_sq_dtype)
        super().__init__(params, defaults, backend)


class ExtrapAdamW(ExtrapAdam):
    """AdamW (torch.optim.AdamW's arguments and defaults: decoupled weight decay 0.01) with extrapolation."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        gamma: float | Tensor | None = None,
        mode: str = "past",
        noise_std: float = 0.01,
        seed: int = 0,
        store_anchor: bool = False,
        master_weights: bool | str = True,
        exp_avg_dtype: torch.dtype = torch.float32,
        exp_avg_sq_dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
            gamma=gamma,
            mode=mode,
            noise_std=noise_std,
            seed=seed,
            store_anchor=store_anchor,
            master_weights=master_weights,
            exp_avg_dtype=exp_avg_dtype,
            exp_avg_sq_dtype=exp_avg_sq_dtype,
            backend=backend,
        )


class ExtrapLAMB(ExtrapolatingAdaptive):
    """LAMB (Apex FusedLAMB's arguments, defaults and meaning) with extrapolation: the gradients are
    clipped by their global norm (max_grad_norm), the Adam direction (decoupled weight decay with
    adam_w_mode) is scaled per tensor by ||s|| / ||u||, and extrapolation reads that direction. On fp32/fp64
    parameters (16-bit ones with master_weights=False) mode="past" keeps no anchor, as ExtrapAdamW's: the
    recorded weights ("recovery") hold each tensor's trust ratio (recovery.py); store_anchor=True keeps it."""

    STATE = LAMB_STATE

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        adam_w_mode: bool = True,
        grad_averaging: bool = True,
        max_grad_norm: float = 1.0,
        use_nvlamb: bool = False,
        *,
        gamma: float | Tensor | None = None,
        mode: str = "past",
        noise_std: float = 0.01,
        seed: int = 0,
        store_anchor: bool = False,
        master_weights: bool | str = True,
        exp_avg_dtype: torch.dtype = torch.float32,
        exp_avg_sq_dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ):
        check_adaptive(lr, betas, eps, weight_decay)
        if not max_grad_norm >= 0:
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm} (must be >= 0; 0 turns clipping off)")
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=adam_w_mode,
            grad_averaging=grad_averaging,
            max_grad_norm=max_grad_norm,
            use_nvlamb=use_nvlamb,
            gamma=gamma,
            mode=mode,
            noise_std=noise_std,
            seed=seed,
            store_anchor=store_anchor,
            master_weights=master_weights,
            exp_avg_dtype=exp_avg_dtype,
            exp_avg_sq_dtype=exp_avg_sq_dtype,
        )
        check_hyperparameters(gamma=gamma, mode=mode, noise_std=noise_std, master_weights=master_weights)
        check_moment_dtypes(exp_avg_dtype, exp_avg_sq_dtype)
        super().__init__(params, defaults, backend)


class _ApexAdaptive(ApexDropIn):
    """Apex's FusedAdam and FusedLAMB: the base update alone, one phase per step, counted per group as
    Apex counts (group["step"]: group_step.py). With master_weights=False (Apex's default) a 16-bit
    parameter is updated in place, its moments fp32, and its stored value rounded stochastically (where Apex
    rounds to nearest and loses updates below half its spacing); master_weights=True keeps an fp32 master in
    the state ("anchor")."""

    STATE = ADAM_STATE
    _PICKLED = ApexDropIn._PICKLED + ("capturable", "group_steps")

    def __init__(self, params, defaults: dict, backend: str = "auto", capturable: bool = False):
        self.capturable = capturable
        self.group_steps = group_step.GroupSteps()
        super().__init__(params, defaults, backend)

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        check_adaptive(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        check_group_moments(group)
        return Phase.UPDATE, self.STATE.hyper.from_group(group, gamma=0.0)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._rates_on_device()

    def _rates_on_device(self) -> None:
        """capturable=True: each group's lr a float32 tensor on its parameters' device, as Apex keeps it; the
        kernels read it when they run, and LR schedulers write it in place (torch's do, for a tensor lr)."""
        if not self.capturable:
            return
        for group in self.param_groups:
            if group["params"] and not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=group["params"][0].device)

    def init_state(self, p: Tensor, group: dict, phase: Phase) -> dict:
        """As every base's, with a new parameter's count started at its group's."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = group_step.new_count(group, p.device)
        return super().init_state(p, group, phase)

    def _run(self, plan, grads: list, grad_scale, found_inf) -> None:
        _, found_inf_now = self._amp_args(grad_scale, found_inf)
        skipped = self.group_steps.before(self, found_inf_now, self.capturable)
        super()._run(plan, grads, grad_scale, found_inf)
        self.group_steps.after(self, plan.partial_groups, skipped, found_inf_now)

    def load_state_dict(self, state_dict: dict) -> None:
        """Apex's checkpoints (the count in the group) and torch.optim's (a count per parameter) both load:
        the group's count is Apex's, or the largest of the parameters', and every parameter takes it."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if group["params"]:
                group["step"] = group_step.loaded_count(group, self.state, self.capturable)
        self.group_steps.lag_all(self.param_groups)
        self._rates_on_device()


class FusedAdam(_ApexAdaptive):
    """Drop-in for `apex.optimizers.FusedAdam`: Adam (adam_w_mode=True: AdamW) in one pass per step.
    capturable=True keeps the group's step count and lr on the device (lr as a float32 tensor, as Apex's).
    master_weights=False (Apex's default) keeps no fp32 copy of a 16-bit parameter (fp32 moments: 8 bytes of
    state per element, as Apex); True keeps one, the state's "anchor". exp_avg_dtype, exp_avg_sq_dtype and
    store_param_remainders are Transformer Engine's FusedAdam's (16-bit moments, rounded stochastically here:
    ExtrapAdam's; the master of a bf16 parameter as its 16 low bits: master_weights="compensated")."""

    _PICKLED = _ApexAdaptive._PICKLED + ("master_weights",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adam_w_mode: bool = True,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        set_grad_none: bool = True,
        capturable: bool = False,
        master_weights: bool | str = False,
        *,
        exp_avg_dtype: torch.dtype = torch.float32,
        exp_avg_sq_dtype: torch.dtype = torch.float32,
        store_param_remainders: bool = False,
        backend: str = "auto",
    ):
        master_weights = compensation.remainders_as_master(store_param_remainders, master_weights)
        if amsgrad:
            raise RuntimeError("FusedAdam does not support the AMSGrad variant.")
        check_adaptive(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=adam_w_mode,
            master_weights=master_weights,
            exp_avg_dtype=exp_avg_dtype,
            exp_avg_sq_dtype=exp_avg_sq_dtype,
        )
        check_hyperparameters(master_weights=master_weights)
        check_moment_dtypes(exp_avg_dtype, exp_avg_sq_dtype)
        super().__init__(params, defaults, backend, capturable=capturable)
        self.set_grad_none, self.master_weights = set_grad_none, master_weights


class FusedLAMB(_ApexAdaptive):
    """Drop-in for `apex.optimizers.FusedLAMB`: LAMB with Apex's defaults and meaning. Two keywords Apex's
    lacks: master_weights=True keeps an fp32 master of a 16-bit parameter, and capturable=True keeps lr and
    the group's step count on the device, as FusedAdam's (and FusedMixedPrecisionLamb's) do."""

    STATE = LAMB_STATE

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
        adam_w_mode: bool = True,
        grad_averaging: bool = True,
        set_grad_none: bool = True,
        max_grad_norm: float = 1.0,
        use_nvlamb: bool = False,
        *,
        master_weights: bool | str = False,
        capturable: bool = False,
        exp_avg_dtype: torch.dtype = torch.float32,
        exp_avg_sq_dtype: torch.dtype = torch.float32,
        store_param_remainders: bool = False,
        backend: str = "auto",
    ):
        master_weights = compensation.remainders_as_master(store_param_remainders, master_weights)
        if amsgrad:
            raise RuntimeError("FusedLAMB does not support the AMSGrad variant.")
        check_adaptive(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=adam_w_mode,
            grad_averaging=grad_averaging,
            max_grad_norm=max_grad_norm,
            use_nvlamb=use_nvlamb,
            master_weights=master_weights,
            exp_avg_dtype=exp_avg_dtype,
            exp_avg_sq_dtype=exp_avg_sq_dtype,
        )
        check_hyperparameters(master_weights=master_weights)
        check_moment_dtypes(exp_avg_dtype, exp_avg_sq_dtype)
        super().__init__(params, defaults, backend, capturable=capturable)
        self.set_grad_none = set_grad_none
