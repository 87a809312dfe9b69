"""What a step launches, built once and reused: the per-step host path of the optimizer classes.

Everything that changes only with the param groups, the optimizer state or the hyperparameters (the
(device, dtype) buckets and their state lists, each bucket's backend, the operator arguments) is built
by `Plan`, which validates it with the Python layer's messages (functional.check_param and
check_bucket), and is kept while the optimizer still matches it. A step then only collects the
gradients (new tensors every step under zero_grad(set_to_none=True)), checks with a few C-level passes
over the parameter list that the plan still holds, and launches; the per-step inputs are validated in
one place, the extension's operator for the `cpu`/`cuda` backends (csrc/bindings.cpp), before any
tensor is written. A plan no longer holds (each case tested in tests/test_plan.py) when:
- the groups' parameters change (add_param_group, a params list edited in place), or which of them
  have a gradient;
- the state changes (load_state_dict, a state tensor replaced or deleted);
- a group option changes: a new lr (an LR scheduler) re-derives only that group's launch arguments; a
  change of mode, of momentum on/off or of LARS plans the step anew;
- a parameter was re-allocated with another dtype, device or shape: the per-step validation refuses
  the stale launch before writing anything, and the step is planned anew, which re-buckets the
  parameters or raises the Python layer's error.
Steps on DTensor (FSDP2) or complex parameters are planned anew every time: the kernels see their local
shards or real views, views made per call.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import replace
from itertools import chain, repeat

import torch
from torch import Tensor

from . import functional, lamb
from .backends import cpu as extension
from .bucket import Bucket, Hyper, Phase, bucket_phase, state_dtype
from .functional import Work
from .lars import trust_ratios
from .norms import squares
from .sharded import is_dtensor, local, shard_group

_GRAD = operator.attrgetter("grad")
_PARAMS = operator.itemgetter("params")
HYPER_KEYS = ("lr", "gamma", "momentum", "dampening", "weight_decay", "nesterov", "noise_std",
              "trust_coefficient", "mode", "past", "store_anchor", "master_weights")


def flat_params(groups: list[dict]) -> list[Tensor]:
    return list(chain.from_iterable(map(_PARAMS, groups)))


def group_key(group: dict) -> tuple:
    """A group's options as compared between steps: tensors (a capturable lr) and lists by identity."""
    return tuple(id(v) if isinstance(v, (Tensor, list)) else v for v in group.values())


def check_group(group: dict) -> None:
    functional.check_hyperparameters(**{k: group[k] for k in HYPER_KEYS if k in group})


def as_real(t: Tensor) -> Tensor:
    """A complex tensor's real view (same storage: every phase is elementwise, as torch.optim treats
    complex parameters); any other tensor itself."""
    return torch.view_as_real(t) if t.is_complex() else t


def kernel_view(t: Tensor) -> Tensor:
    """The tensor the kernels write: the real view of a DTensor's local shard or of the tensor itself."""
    return as_real(local(t))


def _device(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


class Rejected(Exception):
    """A launch's validation refused the step before anything was written (the cause says why)."""


class Launch:
    """One phase over one bucket, ready to run with the gradients of a step: a `Work` and the positions
    of its gradients in the step's flat gradient list."""

    def __init__(self, work: Work, positions: list[int] | None, total: int = 0, views: bool = False):
        self.work = work
        self.views = views  # DTensor or complex parameters: the gradients' kernel views are taken per step
        self.global_grad_norm: Tensor | None = None  # LAMB: set by run_launches each step
        if positions is None:  # a one-off launch (functional.run): the bucket's own gradients
            self.pick = lambda flat: work.bucket.grads
        elif len(positions) == total and positions == list(range(total)):
            self.pick = lambda flat: flat  # every gradient of the step, in order: the common case
        elif len(positions) == 1:
            position = positions[0]
            self.pick = lambda flat: [flat[position]]
        else:
            self.pick = operator.itemgetter(*positions)
        self.retune(work.hyper)

    @property
    def validates_itself(self) -> bool:
        return self.work.backend.validates

    def retune(self, hyper: Hyper) -> None:
        """Takes a group's new hyperparameters (same phase and state layout)."""
        self.work = self.work._replace(hyper=hyper)
        phase, bucket, _, backend = self.work
        self._calls: dict[str, object] = {}  # kind -> extension.prepared_call
        self.live_rates = False
        self.clips = hyper.base == "lamb" and hyper.max_grad_norm > 0  # LAMB: needs the global gradient norm
        for name in ("lr", "gamma"):  # a rate tensor converted to the bucket's device and dtype is a copy:
            value = getattr(hyper, name)  # the call is then prepared anew each step, to read its value
            if backend.validates and isinstance(value, Tensor):
                self.live_rates |= hyper.rate(name, bucket)[1].data_ptr() != value.data_ptr()
        if backend.validates and hyper.base != "sgd":  # the same for capturable betas (float64 copies)
            for value, (_, converted) in zip(hyper.betas, hyper.kernel_betas(bucket)):
                self.live_rates |= converted is not None and converted.data_ptr() != value.data_ptr()

    def _call(self, kind: str = "run"):
        """The extension's prepared operator call of `kind` (run, check, norms), made again each step where a
        rate is a converted copy."""
        call = self._calls.get(kind)
        if call is None:
            phase, bucket, hyper, _ = self.work
            call = extension.prepared_call(phase, bucket, hyper, kind=kind, backend=self.work.backend.name)
            if not self.live_rates:
                self._calls[kind] = call
        return call

    def grads(self, flat: list) -> list[Tensor]:
        grads = self.pick(flat)
        return [kernel_view(g) for g in grads] if self.views else grads

    def validate(self, grads, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        """Raises, writing nothing, if the launch would be refused."""
        phase, bucket, _, backend = self.work
        if backend.validates:
            self._call("check")(grads, None, grad_scale, found_inf)
        else:
            functional.check_bucket(replace(bucket, grads=list(grads)), backend)

    def run(self, grads, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        phase, bucket, hyper, backend = self.work
        grad_scale, found_inf = _device(grad_scale, bucket.device), _device(found_inf, bucket.device)
        if not backend.validates:
            backend.apply(phase, replace(bucket, grads=list(grads), global_grad_norm=self.global_grad_norm), hyper,
                          grad_scale, found_inf)
            return
        trust = None
        if hyper.lars:
            trust = trust_ratios(phase, replace(bucket, grads=list(grads)), hyper, grad_scale)
        elif hyper.base == "lamb":
            norms = self._call("norms")
            grad_scale, trust = lamb.step_inputs(replace(bucket, global_grad_norm=self.global_grad_norm), hyper,
                                                 grad_scale, lambda scale: norms(grads, None, scale, None))
        self._call()(grads, trust, grad_scale, found_inf)


def global_grad_norm(launches: list[Launch], grads: list[list[Tensor]]) -> Tensor | None:
    """LAMB's clipping norm: of all the step's gradients together (still scaled by AMP), in float64 on the
    device of the first; a sharded (FSDP2) bucket's squares are summed over its shard group. None where no
    gradient is there."""
    total = None
    for launch, gs in zip(launches, grads):
        if not gs:
            continue
        bucket_squares = squares(gs, state_dtype(gs[0].dtype)).sum()
        if launch.work.bucket.shard_group is not None:
            torch.distributed.all_reduce(bucket_squares, group=launch.work.bucket.shard_group)
        total = bucket_squares if total is None else total + bucket_squares.to(total.device)
    return None if total is None else total.sqrt()


def clip(launches: list[Launch], grads: list[list[Tensor]]) -> None:
    """Gives LAMB's launches the step's global gradient norm (before any writes: it reads the gradients)."""
    if any(launch.clips for launch in launches):
        norm = global_grad_norm(launches, grads)
        for launch in launches:
            launch.global_grad_norm = norm


def run_launches(launches: list[Launch], flat_grads: list, grad_scale: Tensor | None,
                 found_inf: Tensor | None) -> None:
    """Validates every launch, then runs them; an extension operator alone validates itself. A
    refusal, before anything is written, raises `Rejected`."""
    grads = [launch.grads(flat_grads) for launch in launches]
    if len(launches) == 1 and launches[0].validates_itself:
        try:
            clip(launches, grads)
            launches[0].run(grads[0], grad_scale, found_inf)
        except (ValueError, TypeError, NotImplementedError) as err:  # its checks (csrc/bindings.cpp)
            raise Rejected() from err
        return
    try:
        for launch, g in zip(launches, grads):
            device = launch.work.bucket.device
            launch.validate(g, _device(grad_scale, device), _device(found_inf, device))
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
        raise Rejected() from err
    clip(launches, grads)
    for launch, g in zip(launches, grads):
        launch.run(g, grad_scale, found_inf)


class Plan:
    """The launches of one kind of step (`phase_of` None: each group's own phase; or EXTRAPOLATE) over
    `groups`, for the parameters that have a gradient now. Building it validates every parameter
    and creates the missing state, in that order, so a refused step leaves the state untouched."""

    def __init__(self, opt, groups: list[dict], phase_of: Phase | None, params: list[Tensor], grads: list):
        self.groups = list(groups)
        self.phase_of = phase_of
        self.backend = opt.backend
        self.param_ids = list(map(id, params))
        self.mask = tuple(map(operator.is_not, grads, repeat(None)))
        self.group_keys = [group_key(g) for g in groups]
        self.fresh = True  # not yet run: a refusal is the user's error, not a stale plan
        self._indices: dict = {}
        index = {p: i for i, p in enumerate(flat_params(opt.param_groups))}  # keys the noise
        position = {id(p): i for i, p in enumerate(params)}
        with_views = False
        staged = []
        for number, group in enumerate(groups):
            check_group(group)
            group_phase, hyper = opt._launch_args(group)
            if phase_of is not None:
                group_phase = phase_of
            by_key = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_key[(p.device, p.dtype)].append(p)
            for (_, dtype), members in by_key.items():
                phase = bucket_phase(group_phase, dtype)
                # the kernels see local tensors: FSDP2 shards step where they live
                shards, local_grads = [local(p) for p in members], [local(p.grad) for p in members]
                backend = functional.resolve_backend(opt.backend, shards, local_grads, hyper.base)
                names = [f"param {index[p]} (shape {tuple(p.shape)})" for p in members]
                for p, x, g, name in zip(members, shards, local_grads, names):
                    functional.check_param(x, g, backend, name)
                    if phase == Phase.UPDATE_NOISE and is_dtensor(p):
                        raise RuntimeError(f"{name}: mode='noise' keys its noise by element index and does not "
                                           "support sharded (FSDP2) parameters; use mode 'local' or 'past'")
                views = any(is_dtensor(p) or p.is_complex() for p in members)
                with_views |= views
                # whole-tensor norms of sharded tensors: LARS's and LAMB's trust ratios
                group_of_shards = shard_group(members, names) if hyper.lars or hyper.base == "lamb" else None
                staged.append((number, group, phase, hyper, backend, members, shards, local_grads, names,
                               group_of_shards, views))
        self.launches: list[Launch] = []
        self.by_group: list[list[Launch]] = [[] for _ in groups]
        for number, group, phase, hyper, backend, members, shards, local_grads, names, shards_group, views in staged:
            states = [opt._init_state(p, group, phase) for p in members]
            shards = [as_real(x) for x in shards]
            bucket = Bucket(
                params=shards,
                grads=[as_real(g) for g in local_grads],
                anchors=[kernel_view(st["anchor"]) if "anchor" in st else x for x, st in zip(shards, states)],
                steps=[st["step"] for st in states],
                indices=[index[p] for p in members],
                names=names,
                shard_group=shards_group,
                master=group.get("master_weights", True),
                **{"momenta": [], **{key: [kernel_view(st[name]) if name != "last_gamma" else st[name] for st in states]
                                     for key, name in opt._state_lists(group, phase).items()}},
            )
            functional.check_bucket(bucket, backend)
            launch = Launch(Work(phase, bucket, hyper, backend), [position[id(p)] for p in members], len(params),
                            views)
            self.launches.append(launch)
            self.by_group[number].append(launch)
        self.reusable = not with_views
        self.stepped = [p for _, _, _, _, _, members, *_ in staged for p in members]
        self.state_ids = self._state_ids(opt)

    def _state_ids(self, opt) -> list[int]:
        """The identities of every state value of the stepped parameters, in order: a replaced, added or
        deleted state tensor (or a replaced state dict) changes them."""
        return list(map(id, chain.from_iterable(map(dict.values, map(opt.state.__getitem__, self.stepped)))))

    def indices(self, phase: Phase) -> frozenset[int]:
        """The optimizer indices of the parameters that `phase` runs on (the phases of a plan's launches
        never change: computed once)."""
        if phase not in self._indices:
            self._indices[phase] = frozenset(i for launch in self.launches if launch.work.phase == phase
                                             for i in launch.work.bucket.indices)
        return self._indices[phase]

    def matches(self, opt, groups: list[dict], params: list[Tensor], grads: list) -> bool:
        """The plan still describes this step. A changed group option that keeps the phase and state
        layout re-derives that group's launch arguments here (validated first: a bad value raises)."""
        if not self.reusable or opt.backend != self.backend or len(groups) != len(self.groups):
            return False
        if list(map(id, params)) != self.param_ids:
            return False
        if tuple(map(operator.is_not, grads, repeat(None))) != self.mask:
            return False
        if self._state_ids(opt) != self.state_ids:
            return False
        for number, group in enumerate(groups):
            if group is not self.groups[number]:
                return False
            key = group_key(group)
            if key != self.group_keys[number] and not self._retune(opt, number, key):
                return False
        return True

    def _retune(self, opt, number: int, key: tuple) -> bool:
        group = self.groups[number]
        check_group(group)
        phase, hyper = opt._launch_args(group)
        if self.phase_of is not None:
            phase = self.phase_of
        for launch in self.by_group[number]:
            old = launch.work
            if (old.phase != bucket_phase(phase, old.bucket.dtype) or old.bucket.master != group.get("master_weights", True)
                    or old.hyper.layout() != hyper.layout()):
                return False
        for launch in self.by_group[number]:
            launch.retune(hyper)
        self.group_keys[number] = key
        return True

    def run(self, grads: list, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        if self.launches:
            run_launches(self.launches, grads, grad_scale, found_inf)
        self.fresh = False
