"""The optimizer classes: thin torch.optim.Optimizer front ends over `functional.run`.

`FusedOptimizer` turns param groups into validated (device, dtype) buckets with their state;
`ExtrapSGD` and `FusedSGD` only say which phase each group runs and with which hyperparameters.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required

from . import functional
from .bucket import Bucket, Hyper, Phase, state_dtype
from .functional import Work, check_hyperparameters, check_param, resolve_backend
from .sharded import is_dtensor, local, shard_group

_HYPER_KEYS = ("lr", "gamma", "momentum", "dampening", "weight_decay", "nesterov", "noise_std",
               "trust_coefficient", "mode", "past")


class FusedOptimizer(Optimizer):
    """Shared machinery: state, buckets, AMP arguments, state_dict dtypes. Subclasses define
    `_launch_args(group)` -> (phase, Hyper) and `_has_anchor(param)`."""

    def __init__(self, params, defaults: dict, backend: str = "auto"):
        self.backend = backend
        super().__init__(params, defaults)
        # torch.amp.GradScaler hands grad_scale and found_inf to step() instead of unscaling grads.
        self._step_supports_amp_scaling = True

    def _launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        raise NotImplementedError

    def _has_anchor(self, param: Tensor) -> bool:
        raise NotImplementedError

    def _amp_args(self, grad_scale, found_inf):
        """Explicit arguments, else what GradScaler.step set on the optimizer for this call."""
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        return grad_scale, found_inf

    def _init_state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if "step" not in state:  # a loaded torch.optim.SGD state has a momentum buffer but no step
            first = 1.0 if "momentum_buffer" in state else 0.0
            state["step"] = torch.tensor(first, dtype=torch.float32, device=p.device)
        sdtype = state_dtype(p.dtype)
        if self._has_anchor(p) and "anchor" not in state:
            state["anchor"] = torch.empty_like(p, dtype=sdtype, memory_format=torch.contiguous_format).copy_(p)
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=sdtype, memory_format=torch.contiguous_format)
        return state

    def _gather(self, groups: list[dict], phase_of=None) -> list[Work]:
        """Validates every parameter with a gradient in `groups` (before any state is created), then
        builds one bucket per (group, device, dtype)."""
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        plan = []
        for group in groups:
            check_hyperparameters(**{k: group[k] for k in _HYPER_KEYS if k in group})
            phase, hyper = self._launch_args(group)
            if phase_of is not None:
                phase = phase_of
            by_key = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_key[(p.device, p.dtype)].append(p)
            for params in by_key.values():
                # the kernels see local tensors: FSDP2 shards step where they live
                shards, grads = [local(p) for p in params], [local(p.grad) for p in params]
                backend = resolve_backend(self.backend, shards, grads)
                names = [f"param {index[p]} (shape {tuple(p.shape)})" for p in params]
                for p, x, g, name in zip(params, shards, grads, names):
                    check_param(x, g, backend, name)
                    if phase == Phase.UPDATE_NOISE and is_dtensor(p):
                        raise RuntimeError(f"{name}: mode='noise' keys its noise by element index and does not "
                                           "support sharded (FSDP2) parameters; use mode 'local' or 'past'")
                group_of_shards = shard_group(params, names) if hyper.lars else None
                plan.append((group, phase, hyper, backend, params, shards, grads, names, group_of_shards))
        work = []
        for group, phase, hyper, backend, params, shards, grads, names, group_of_shards in plan:
            states = [self._init_state(p, group) for p in params]
            bucket = Bucket(
                params=shards,
                grads=grads,
                anchors=[local(st["anchor"]) if "anchor" in st else x for x, st in zip(shards, states)],
                momenta=[local(st["momentum_buffer"]) for st in states] if group["momentum"] != 0 else [],
                steps=[st["step"] for st in states],
                indices=[index[p] for p in params],
                names=names,
                shard_group=group_of_shards,
            )
            work.append(Work(phase, bucket, hyper, backend))
        return work

    def _run(self, work: list[Work], grad_scale, found_inf) -> None:
        grad_scale, found_inf = self._amp_args(grad_scale, found_inf)
        with torch.no_grad():
            functional.run(work, grad_scale, found_inf)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every floating state tensor to its parameter's dtype, which would round the fp32
        master anchor and momentum of 16-bit parameters: restore them at their own precision."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # e.g. a torch.optim.SGD checkpoint has no gamma or mode
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            if saved_id not in saved_state:
                continue
            state = self.state[p]
            for key, value in saved_state[saved_id].items():
                if key == "momentum_buffer" and value is None:  # torch.optim.SGD with momentum 0
                    state.pop(key, None)
                elif torch.is_tensor(value):
                    dtype = torch.float32 if key == "step" else state_dtype(p.dtype)
                    state[key] = value.to(device=p.device, dtype=dtype, copy=True)


class ExtrapSGD(FusedOptimizer):
    r"""Extrapolated SGD (Lin, Kong, Stich, Jaggi, ICML 2020), SPEC.md.

    mode="past" (default): one backward per `step()`, which updates the anchor and extrapolates from
    the past: a drop-in replacement for torch.optim.SGD. mode="local": the paper's two-phase
    EXTRAP-SGD: backward, `extrapolate()`, backward, `step()` (or `step(closure)`, which does all four).
    mode="noise": one phase, the parameters perturbed by counter-based Gaussian noise around the anchor.
    gamma=None uses the group's current lr (it follows LR schedulers); gamma=0 is exactly SGD.
    """

    def __init__(self, params, lr: float | Tensor = 1e-3, gamma: float | Tensor | None = None,
                 mode: str = "past", momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
                 lars: bool = False, trust_coefficient: float = 0.001, lars_clip: bool = False,
                 extrapolate_with_momentum: bool = False, past: str = "update", noise_std: float = 0.01,
                 seed: int = 0, *, backend: str = "auto"):
        defaults = dict(lr=lr, gamma=gamma, mode=mode, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, lars=lars,
                        trust_coefficient=trust_coefficient, lars_clip=lars_clip,
                        extrapolate_with_momentum=extrapolate_with_momentum, past=past,
                        noise_std=noise_std, seed=seed)
        check_hyperparameters(**defaults)
        super().__init__(params, defaults, backend)
        self._extrapolated: set[int] | None = None  # indices of the parameters awaiting the local step()

    def _has_anchor(self, param: Tensor) -> bool:
        return True

    def _launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        gamma = group["lr"] if group["gamma"] is None else group["gamma"]
        phase = {"local": Phase.UPDATE, "past": Phase.UPDATE_PAST, "noise": Phase.UPDATE_NOISE}[group["mode"]]
        if phase == Phase.UPDATE_NOISE and (functional._number(gamma) == 0 or group["noise_std"] == 0):
            phase, gamma = Phase.UPDATE_PAST, 0.0  # extrapolation switched off: plain SGD
        return phase, Hyper(
            lr=group["lr"], gamma=gamma, momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
            lars=group["lars"], trust_coefficient=group["trust_coefficient"], lars_clip=group["lars_clip"],
            extrapolate_with_momentum=group["extrapolate_with_momentum"], past_grad=group["past"] == "grad",
            noise_std=group["noise_std"], seed=group["seed"])

    def _local_groups(self) -> list[dict]:
        return [g for g in self.param_groups if g["mode"] == "local"]

    @torch.no_grad()
    def extrapolate(self, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
        """Two-phase step 2 for the mode="local" groups: s <- x; x <- s - gamma * e(g), with g the
        gradient just computed at x (under DDP: the worker's own, from inside `model.no_sync()`)."""
        local = self._local_groups()
        if not local:
            raise RuntimeError("extrapolate() belongs to mode='local'; modes 'past' and 'noise' "
                               "extrapolate inside step()")
        if self._extrapolated is not None:
            raise RuntimeError("extrapolate() called twice: call step() to finish the iteration first")
        work = self._gather(local, phase_of=Phase.EXTRAPOLATE)
        self._run(work, grad_scale, found_inf)
        self._extrapolated = {i for w in work for i in w.bucket.indices}

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
        """One iteration. With a closure (which zeroes grads, computes the loss and calls backward), a
        mode="local" iteration runs all four steps itself; the loss returned is the one at x_t."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if self._local_groups() and self._extrapolated is None:
                self.extrapolate(grad_scale=grad_scale, found_inf=found_inf)
                with torch.enable_grad():
                    closure()
        work = self._gather(self.param_groups)
        updated = {i for w in work if w.phase == Phase.UPDATE for i in w.bucket.indices}
        if updated or self._extrapolated:
            if self._extrapolated is None:
                raise RuntimeError("step() in mode='local' needs extrapolate() first (or pass a closure)")
            if updated != self._extrapolated:
                raise RuntimeError("mode='local': the parameters with gradients at step() are not the "
                                   "ones extrapolated by extrapolate()")
        self._run(work, grad_scale, found_inf)
        self._extrapolated = None
        return loss


class FusedSGD(FusedOptimizer):
    """Drop-in for `apex.optimizers.FusedSGD`: torch.optim.SGD semantics in one fused pass.

    `wd_after_momentum` adds the weight decay to the update direction instead of the gradient, as in
    Apex. `materialize_master_grads` is accepted for signature compatibility: 16-bit parameters here
    always keep an fp32 master copy in the optimizer state and read their 16-bit gradients directly.
    """

    def __init__(self, params, lr=required, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, wd_after_momentum: bool = False,
                 materialize_master_grads: bool = True, set_grad_none: bool = False, *,
                 backend: str = "auto"):
        if lr is required:
            raise ValueError("FusedSGD needs lr")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, wd_after_momentum=wd_after_momentum)
        check_hyperparameters(**defaults)
        super().__init__(params, defaults, backend)
        self.materialize_master_grads = materialize_master_grads
        self.set_grad_none = set_grad_none

    def _has_anchor(self, param: Tensor) -> bool:
        return state_dtype(param.dtype) != param.dtype  # the fp32 master of a 16-bit parameter

    def _launch_args(self, group: dict) -> tuple[Phase, Hyper]:
        return Phase.UPDATE, Hyper(
            lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=group["weight_decay"], nesterov=group["nesterov"],
            wd_after_momentum=group["wd_after_momentum"])

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._run(self._gather(self.param_groups), grad_scale, found_inf)
        return loss
