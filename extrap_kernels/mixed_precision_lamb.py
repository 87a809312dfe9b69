"""`FusedMixedPrecisionLamb`, the drop-in for Apex's (MLPerf BERT's LAMB): FusedLAMB with its lr and step count
on the device, an fp32 master for the parameters of `reduced_precision_dtype`, and GradScaler's scale and
found_inf read on the device through `step(grad_scaler=...)`, so that a step needs no host synchronization."""

from __future__ import annotations

import torch

from .adam import FusedLAMB
from .bucket import Phase
from .hyper import Hyper
from .optimizer import eager


class FusedMixedPrecisionLamb(FusedLAMB):
    """Drop-in for `apex.optimizers.FusedMixedPrecisionLamb`: Apex's arguments and defaults. As Apex's, lr is a
    float32 tensor and the count (`step`, where it starts) a tensor on the parameters' device, advanced on the
    device unless found_inf is set; max_grad_norm is the constructor's for every group (Apex reads it from
    `defaults`); a group holds one parameter dtype, and its parameters of `reduced_precision_dtype` keep an fp32
    master. Unlike Apex's, the master is in the state ("anchor", so state_dict() saves it), the count a float32
    0-dim tensor (Apex's: int32 of one element; both load), and the moments fp32 for every parameter (Apex's
    are in the dtype of a 16-bit parameter without a master, which is then rounded stochastically here)."""

    _PICKLED = FusedLAMB._PICKLED + ("reduced_precision_dtype", "_first_count")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        step: int = 0,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
        adam_w_mode: bool = True,
        grad_averaging: bool = True,
        max_grad_norm: float = 1.0,
        use_nvlamb: bool = False,
        reduced_precision_dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ):
        self.reduced_precision_dtype = reduced_precision_dtype
        self._first_count = step
        super().__init__(
            params,
            lr=float(lr),
            bias_correction=bias_correction,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            adam_w_mode=adam_w_mode,
            grad_averaging=grad_averaging,
            max_grad_norm=max_grad_norm,
            use_nvlamb=use_nvlamb,
            capturable=True,
            backend=backend,
        )

    def add_param_group(self, param_group: dict) -> None:
        """A group's parameters share one dtype (Apex asserts it at its step; refused here when the group is
        added), which says whether they keep a master; the count starts at the constructor's `step`."""
        dtypes = {p.dtype for p in param_group["params"]} if isinstance(param_group["params"], list) else set()
        if len(dtypes) > 1:
            raise ValueError(
                "FusedMixedPrecisionLamb: the parameters of a group must be of one dtype, got "
                f"{sorted(map(str, dtypes))} (give each dtype a param group of its own)"
            )
        reduced = self.reduced_precision_dtype is not None and dtypes == {self.reduced_precision_dtype}
        param_group.setdefault("step", self._first_count)
        param_group["master_weights"] = reduced
        super().add_param_group(param_group)

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        phase, hyper = super().launch_args(group)
        return phase, type(hyper).from_group(group, gamma=0.0, max_grad_norm=self.defaults["max_grad_norm"])

    @eager
    @torch.no_grad()
    def step(self, closure=None, grad_scaler=None, *, grad_scale=None, found_inf=None):
        """One step; with `grad_scaler` (a torch.amp.GradScaler: GradScaler.step passes itself) the gradients
        are divided by its scale and the step skipped where it found an inf, both read on the device
        (`grad_scale` and `found_inf`, every optimizer's keywords here, say the same directly)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scaler is not None:
            device = next(p for group in self.param_groups for p in group["params"]).device
            found_inf = grad_scaler._check_inf_per_device(self)[device]
            grad_scale = grad_scaler._get_scale_async()
        # (the plan's run itself, not super().step(): torch.optim wraps each class's step() with the step hooks,
        # and FusedLAMB's, once wrapped, would run them a second time)
        self._run(*self._plan(self.param_groups), grad_scale, found_inf)
        return loss
