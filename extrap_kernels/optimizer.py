"""The optimizer classes: thin torch.optim.Optimizer front ends over a cached `plan.Plan`.

`FusedOptimizer` keeps one plan per kind of step (its launches: validated (device, dtype) buckets with
their state and operator arguments, built once) and runs it with each step's gradients; `ExtrapSGD`
and `FusedSGD` only say which phase each group runs and with which hyperparameters.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required

from . import backends
from .accumulation import ACCUMULATED, Mark
from .bucket import Phase, state_dtype
from .checks import Rejected, check_hyperparameters
from .functional import mode_phase
from .hyper import Hyper, SGDHyper
from .plan import Plan, flat_params, grad_of
from .sharded import local, sharding_wrapper
from .state import SGD_STATE, TrackedState
from .writes import VERSION, Versions, retake


def eager(method):
    """Runs `method` eagerly under torch.compile (one graph break where it is called): a step looks up
    and checks a cached Python plan and then makes one fused operator call per bucket, so a trace
    would guard on that state and gain nothing. The operators themselves are traceable (a Meta kernel
    each: csrc/bindings.cpp)."""
    return torch.compiler.disable(method)


class FusedOptimizer(Optimizer):
    """Shared machinery: state, the cached plans, AMP arguments, state_dict dtypes.

    The plan (plan.py) asks an optimizer four things through public hooks:
    `launch_args(group)` -> (phase, Hyper) of a step; `has_anchor(param, group)`: whether the parameter
    keeps an anchor; `state_lists(group, phase)`: the bucket's state lists, bucket field -> state key; and
    `init_state(param, group, phase)`: the parameter's state, created where missing. The iteration (the
    subclasses ExtrapolatingOptimizer and ApexDropIn) defines the first two; the base's `STATE` component
    (state.py) answers the last two, so a class is its iteration composed with its base."""

    STATE = SGD_STATE  # the base's state and hyperparameter record (state.py): its backends, its checkpoints
    # What torch.optim's __getstate__ (deepcopy, pickle, torch.save of the optimizer) would drop.
    _PICKLED = ("backend", "_extrapolated", "set_grad_none", "materialize_master_grads", "sharded_by")

    def __init__(self, params, defaults: dict, backend: str = "auto"):
        backends.check_name(backend)
        self.backend = backend
        super().__init__(params, defaults)
        self._init_transient()

    def _init_transient(self) -> None:
        if type(self.state) is defaultdict:  # (torch.optim's own, made just now: nothing else holds it yet)
            self.state = TrackedState(self.state)
        # the version counter of each parameter when a step last wrote it: writes between steps are honoured
        self._versions = Versions()
        # Phase.EXTRAPOLATE or None (a step) -> Plan; a plan checks itself against the param groups and
        # the state at every step (plan.Plan.matches), so nothing here needs to invalidate it
        self._plans: dict = {}
        # torch.amp.GradScaler hands grad_scale and found_inf to step() instead of unscaling grads.
        self._step_supports_amp_scaling = True

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._PICKLED if k in self.__dict__})
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        self._init_transient()

    def resolved_backends(self) -> dict[tuple[torch.device, torch.dtype], str]:
        """The backend that runs each (device, dtype) group of parameters ("auto" resolved): strided
        tensors, say, send a group to `foreach`."""
        by_key = defaultdict(list)
        for p in flat_params(self.param_groups):
            by_key[(p.device, p.dtype)].append(p)
        return {
            key: backends.for_bucket(
                self.backend, [local(p) for p in ps], [local(p.grad) for p in ps if p.grad is not None]
            ).name
            for key, ps in by_key.items()
        }

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        raise NotImplementedError

    def has_anchor(self, param: Tensor, group: dict) -> bool:
        raise NotImplementedError

    def state_lists(self, group: dict, phase: Phase) -> dict[str, str]:
        """The bucket's per-parameter state lists besides anchors and steps: bucket field -> state key."""
        return self.STATE.state_lists(group, phase)

    def _amp_args(self, grad_scale, found_inf):
        """Explicit arguments, else what GradScaler.step set on the optimizer for this call."""
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        return grad_scale, found_inf

    def init_state(self, p: Tensor, group: dict, phase: Phase) -> dict:
        """The state `phase` needs for `p`, created where missing (the base's STATE says how)."""
        return self.STATE.init_state(self.state[p], p, group, phase, self.has_anchor(p, group))

    def _plan(self, groups: list[dict], phase_of: Phase | None = None) -> tuple[Plan, list]:
        """The plan of this step over `groups` and the step's gradients, one per parameter (None where
        there is none). The cached plan is reused while it still matches (plan.py says when)."""
        params = flat_params(groups)
        grads = list(map(grad_of, params))
        plan = self._plans.get(phase_of)
        if plan is None or not plan.matches(self, groups, params, grads):
            plan = self._plans[phase_of] = Plan(self, groups, phase_of, params, grads)
        return plan, grads

    def _run(self, plan: Plan, grads: list, grad_scale, found_inf) -> None:
        """Runs a plan. A reused plan that the per-step validation refuses (nothing was written: e.g. a
        parameter re-allocated with another dtype) is planned anew, which re-validates the step with
        the Python layer's messages, and run again."""
        grad_scale, found_inf = self._amp_args(grad_scale, found_inf)
        try:
            self._run_honouring_writes(plan, grads, grad_scale, found_inf)
            return
        except Rejected as rejected:
            if plan.fresh:
                raise rejected.__cause__ from None
        groups, phase_of = plan.groups, plan.phase_of
        params = flat_params(groups)
        plan = self._plans[phase_of] = Plan(self, groups, phase_of, params, grads)
        try:
            self._run_honouring_writes(plan, grads, grad_scale, found_inf)
        except Rejected as rejected:
            raise rejected.__cause__ from None

    def _run_honouring_writes(self, plan: Plan, grads: list, grad_scale, found_inf) -> None:
        """Runs a plan from the parameters as they are: one written since this optimizer last wrote it is the
        new iterate (writes.py), except inside a local iteration, where x is the extrapolated point."""
        moved, versions = self._versions.moved(plan)
        if moved:
            if getattr(self, "_extrapolated", None) is not None:
                moved = [p for p in moved if id(p) not in plan.local_step_ids]
            retake(self.state, moved)
        plan.run(grads, grad_scale, found_inf)
        self._versions.record(plan, list(map(VERSION, plan.stepped)) if plan.counts_writes else versions)

    @eager
    @torch.no_grad()
    def step(self, closure=None, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
        """One update of every parameter with a gradient (the closure, if given, computes them first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._run(*self._plan(self.param_groups), grad_scale, found_inf)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every floating state tensor to its parameter's dtype, which would round the fp32
        master anchor and moments of 16-bit parameters: restore each at its own precision (STATE.dtype_of)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # e.g. a torch.optim.SGD checkpoint has no gamma or mode
            for key, value in self.defaults.items():
                if key != "differentiable":  # torch's own default, which our groups do not carry
                    group.setdefault(key, value)
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, params):
            if saved_id not in saved_state:
                continue
            state = self.state[p]
            for key, value in saved_state[saved_id].items():
                if key == "momentum_buffer" and value is None:  # torch.optim.SGD with momentum 0
                    state.pop(key, None)
                elif key == "step" and not torch.is_tensor(value):  # older checkpoints count in a number
                    state[key] = torch.tensor(float(value), dtype=torch.float32, device=p.device)
                elif torch.is_tensor(value):
                    state[key] = value.to(device=p.device, dtype=self.STATE.dtype_of(key, p, group), copy=True)


class ExtrapolatingOptimizer(FusedOptimizer):
    """The iteration of the extrapolating optimizers (ExtrapSGD, ExtrapAdam, ExtrapLAMB), whatever their
    base: mode "local" is backward, `extrapolate()`, backward, `step()` (or `step(closure)`); modes
    "past" and "noise" extrapolate inside `step()`."""

    def __init__(self, params, defaults: dict, backend: str = "auto"):
        super().__init__(params, defaults, backend)
        self._extrapolated: set[int] | None = None  # indices of the parameters awaiting the local step()
        self.sharded_by = sharding_wrapper()  # (ZeroRedundancyOptimizer: mode "local" is refused)

    def has_anchor(self, param: Tensor, group: dict) -> bool:
        return True  # (the anchor-free past mode recomputes it: STATE.init_state keeps none there)

    def local_groups(self) -> list[dict]:
        return [g for g in self.param_groups if g.get("mode") == "local"]

    @staticmethod
    def _mode_phase(group: dict) -> tuple[Phase, float | Tensor]:
        """The phase of a step in the group's mode and its gamma (functional.mode_phase)."""
        return mode_phase(group.get("mode", "past"), group["lr"], group.get("gamma"), group["noise_std"])

    @eager
    @torch.no_grad()
    def extrapolate(self, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
        """Two-phase step 2 for the mode="local" groups: s <- x; x <- s - gamma * e(g), with g the
        gradient just computed at x (under DDP: the worker's own, from inside `model.no_sync()`)."""
        local = self.local_groups()
        if not local:
            raise RuntimeError(
                "extrapolate() belongs to mode='local'; modes 'past' and 'noise' extrapolate inside step()"
            )
        if self._extrapolated is not None:
            raise RuntimeError("extrapolate() called twice: call step() to finish the iteration first")
        if getattr(self, "sharded_by", None):
            raise RuntimeError(
                f"mode='local' under {self.sharded_by}: each rank steps and extrapolates only its shard of the "
                "parameters, so the second gradient would be taken where the other ranks' parameters are not "
                "extrapolated; use mode='past' (or 'noise'), which ZeRO runs as unsharded training"
            )
        plan, grads = self._plan(local, Phase.EXTRAPOLATE)
        self._run(plan, grads, grad_scale, found_inf)
        self._extrapolated = plan.indices(Phase.EXTRAPOLATE)
        # (step() refuses a second gradient added onto this one: accumulation.py)
        self._mark = Mark([p for group in local for p in group["params"]])

    @eager
    @torch.no_grad()
    def step(self, closure=None, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
        """One iteration. With a closure (which zeroes grads, computes the loss and calls backward), a
        mode="local" iteration runs all four steps itself; the loss returned is the one at x_t."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if self.local_groups() and self._extrapolated is None:
                self.extrapolate(grad_scale=grad_scale, found_inf=found_inf)
                with torch.enable_grad():
                    closure()
        plan, grads = self._plan(self.param_groups)
        updated = plan.indices(Phase.UPDATE)
        if updated or self._extrapolated:
            if self._extrapolated is None:
                raise RuntimeError(
                    "step() in mode='local' needs extrapolate() first (or pass a closure); a loop that calls "
                    "step() without one (GradScaler's scaler.step(opt), the transformers Trainer, Lightning's "
                    "16-mixed) needs mode='past'"
                )
            if updated != self._extrapolated:
                raise RuntimeError(
                    "mode='local': the parameters with gradients at step() are not the "
                    "ones extrapolated by extrapolate()"
                )
            mark, self._mark = getattr(self, "_mark", None), None
            if mark is not None and mark.accumulated():
                self._run(plan, grads, None, torch.ones(()))  # (skipped: x back at its anchor, nothing counted)
                self._extrapolated = None
                raise RuntimeError(ACCUMULATED)
        self._run(plan, grads, grad_scale, found_inf)
        self._extrapolated = None
        return loss


class ExtrapSGD(ExtrapolatingOptimizer):
    r"""Extrapolated SGD (Lin, Kong, Stich, Jaggi, ICML 2020), docs/SPEC.md.

    mode="past" (default): one backward per `step()`, which updates the anchor and extrapolates from
    the past: a drop-in replacement for torch.optim.SGD. mode="local": the paper's two-phase
    EXTRAP-SGD: backward, `extrapolate()`, backward, `step()` (or `step(closure)`, which does all four).
    mode="noise": one phase, the parameters perturbed by counter-based Gaussian noise around the anchor.
    gamma=None uses the group's current lr (it follows LR schedulers); gamma=0 is exactly SGD.
    With heavy-ball momentum (momentum > 0, no Nesterov, no LARS, past="update") and fp32/fp64
    parameters (or 16-bit ones with master_weights=False), mode="past" keeps no anchor: it is recomputed
    from x and the momentum buffer (state "last_gamma"), so the optimizer needs the memory and bandwidth of
    torch.optim.SGD. store_anchor=True keeps it in the state anyway ("anchor"); checkpoints of either kind
    load into the other.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        gamma: float | Tensor | None = None,
        mode: str = "past",
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        lars: bool = False,
        trust_coefficient: float = 0.001,
        lars_clip: bool = False,
        extrapolate_with_momentum: bool = False,
        past: str = "update",
        noise_std: float = 0.01,
        seed: int = 0,
        store_anchor: bool = False,
        *,
        master_weights: bool | str = True,
        backend: str = "auto",
    ):
        defaults = dict(
            lr=lr,
            gamma=gamma,
            mode=mode,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            lars=lars,
            trust_coefficient=trust_coefficient,
            lars_clip=lars_clip,
            extrapolate_with_momentum=extrapolate_with_momentum,
            past=past,
            noise_std=noise_std,
            seed=seed,
            store_anchor=store_anchor,
            master_weights=master_weights,
        )
        check_hyperparameters(**defaults)
        super().__init__(params, defaults, backend)

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        phase, gamma = self._mode_phase(group)
        hyper = SGDHyper(
            lr=group["lr"],
            gamma=gamma,
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            lars=group["lars"],
            trust_coefficient=group["trust_coefficient"],
            lars_clip=group["lars_clip"],
            extrapolate_with_momentum=group["extrapolate_with_momentum"],
            past_grad=group["past"] == "grad",
            noise_std=group["noise_std"],
            seed=group["seed"],
        )
        if group["mode"] == "past" and not group.get("store_anchor", False) and hyper.anchor_free():
            phase = Phase.UPDATE_PAST_ANCHOR_FREE  # (16-bit ones keep a master there: bucket_phase)
        return phase, hyper


class ApexDropIn(FusedOptimizer):
    """The iteration of Apex's fused optimizers (FusedSGD, FusedAdam, FusedLAMB), whatever their base: the base
    update alone, one phase per step; zero_grad with set_grad_none; and the fp32 master of a 16-bit
    parameter kept in the optimizer state as its anchor."""

    def has_anchor(self, param: Tensor, group: dict) -> bool:
        master = group.get("master_weights", True)  # (a compensated one is x's remainder, not a copy: compensation.py)
        return state_dtype(param.dtype) != param.dtype and master not in (False, "compensated")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Apex's: None with set_grad_none, else torch.optim's zero_grad, whose default on torch 2.x is
        also None (a parameter that gets no gradient then gets no weight decay or momentum either)."""
        super().zero_grad(set_to_none=True if self.set_grad_none else set_to_none)


class FusedSGD(ApexDropIn):
    """Drop-in for `apex.optimizers.FusedSGD`: torch.optim.SGD semantics in one fused pass.

    `wd_after_momentum` adds the weight decay to the update direction instead of the gradient, as in
    Apex. `materialize_master_grads` is accepted for signature compatibility: 16-bit parameters here
    always keep an fp32 master copy in the optimizer state and read their 16-bit gradients directly.
    """

    def __init__(
        self,
        params,
        lr=required,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        wd_after_momentum: bool = False,
        materialize_master_grads: bool = True,
        set_grad_none: bool = False,
        *,
        master_weights: bool | str = True,
        seed: int = 0,
        backend: str = "auto",
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            wd_after_momentum=wd_after_momentum,
            master_weights=master_weights,
            seed=seed,
        )
        check_hyperparameters(**defaults)
        super().__init__(params, defaults, backend)
        self.materialize_master_grads = materialize_master_grads
        self.set_grad_none = set_grad_none

    def launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        return Phase.UPDATE, SGDHyper(
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            wd_after_momentum=group["wd_after_momentum"],
            seed=group.get("seed", 0),
        )
