"""What a step launches, built once and reused: the per-step host path of the optimizer classes.

Everything that changes only with the param groups, the optimizer state or the hyperparameters (the
(device, dtype) buckets and their state lists, each bucket's backend, the operator arguments) is built
by `Plan`, which validates it with the Python layer's messages (checks.check_param and check_bucket),
and is kept while the optimizer still matches it: its launches are prepared once on their backends
(core.Launch). A step then only collects the gradients (new tensors every step under
zero_grad(set_to_none=True)), checks with a few C-level passes over the parameter list that the plan
still holds, and runs the launches (core.run_launches), whose calls validate the step's inputs before any
tensor is written (the extension's in C++, csrc/bindings.cpp).

A plan no longer holds (each case tested in tests/test_plan.py) when:
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
from dataclasses import dataclass
from itertools import chain, repeat

from torch import Tensor

from . import backends, compensation, identity
from .bucket import Bucket, Phase, bucket_phase
from .checks import check_bucket, check_hyperparameters, check_param
from .core import Launch, Work, run_launches
from .hyper import Hyper
from .sharded import as_real, is_dtensor, kernel_view, local, shard_group
from .state import TrackedState

grad_of = operator.attrgetter("grad")
_PARAMS = operator.itemgetter("params")
HYPER_KEYS = (
    "lr",
    "gamma",
    "momentum",
    "dampening",
    "weight_decay",
    "nesterov",
    "noise_std",
    "trust_coefficient",
    "mode",
    "past",
    "store_anchor",
    "master_weights",
)


def flat_params(groups: list[dict]) -> list[Tensor]:
    return list(chain.from_iterable(map(_PARAMS, groups)))


def group_key(group: dict) -> tuple:
    """A group's options as compared between steps: tensors (a capturable lr) and lists by identity."""
    return tuple(id(v) if isinstance(v, (Tensor, list)) else v for v in group.values())


def check_group(group: dict) -> None:
    check_hyperparameters(**{k: group[k] for k in HYPER_KEYS if k in group})


@dataclass
class Staged:
    """One validated (device, dtype) bucket of a group, before its state exists: the plan's first pass."""

    number: int  # the group's position in the plan
    group: dict
    phase: Phase
    hyper: Hyper
    backend: backends.Backend
    members: list[Tensor]  # the parameters as the optimizer holds them
    shards: list[Tensor]  # their local tensors (FSDP2), as the kernels see them
    grads: list[Tensor]
    names: list[str]
    shard_group: object
    views: bool  # DTensor or complex parameters: kernel views are taken per step


class Plan:
    """The launches of one kind of step (`phase_of` None: each group's own phase; or EXTRAPOLATE) over
    `groups`, for the parameters that have a gradient now. Building it validates every parameter
    and creates the missing state, in that order, so a refused step leaves the state untouched."""

    def __init__(self, opt, groups: list[dict], phase_of: Phase | None, params: list[Tensor], grads: list):
        self.groups = list(groups)
        self.phase_of = phase_of
        self.backend = opt.backend
        self.compare = identity.comparisons()
        self.params = tuple(params)
        self.present = tuple(map(operator.is_not, grads, repeat(None)))  # (which parameters have a gradient)
        self.group_keys = [group_key(g) for g in groups]
        self.fresh = True  # not yet run: a refusal is the user's error, not a stale plan
        self._indices: dict = {}
        index = {p: i for i, p in enumerate(flat_params(opt.param_groups))}  # keys the noise
        position = {id(p): i for i, p in enumerate(params)}
        # every bucket is validated before any state is created: a refused step leaves the state untouched
        staged = [bucket for number, group in enumerate(groups) for bucket in self._stage(opt, number, group, index)]
        self.launches: list[Launch] = []
        self.by_group: list[list[Launch]] = [[] for _ in groups]
        for stage in staged:
            launch = Launch(
                self._work(opt, stage, index), [position[id(p)] for p in stage.members], len(params), stage.views
            )
            self.launches.append(launch)
            self.by_group[stage.number].append(launch)
        self.reusable = not any(stage.views for stage in staged)
        self.stepped = [p for stage in staged for p in stage.members]
        self.stepped_ids = list(map(id, self.stepped))
        self.recorded = None  # (generation, versions): writes.Versions' record of the stepped parameters
        # parameters written by torch ops move their version counters (writes.py)
        self.counts_writes = any(stage.backend.counts_writes for stage in staged)
        # the parameters a local step() updates from the anchors that extrapolate() took
        self.local_step_ids = frozenset(
            id(p) for stage in staged if stage.phase == Phase.UPDATE and self.phase_of is None for p in stage.members
        )
        # the groups that step with a parameter lacking a gradient (Apex's group counts: group_step.py)
        self.partial_groups = frozenset(n for n, g in enumerate(groups) if any(p.grad is None for p in g["params"]))
        self.state_dicts = list(map(opt.state.__getitem__, self.stepped))  # (each parameter's, created above)
        self.state_key, dicts = self._state_dicts(opt)
        self.state_values = tuple(chain.from_iterable(map(dict.values, dicts)))

    def _stage(self, opt, number: int, group: dict, index: dict) -> list[Staged]:
        """A group's (device, dtype) buckets, each parameter validated, no state created yet."""
        check_group(group)
        group_phase, hyper = opt.launch_args(group)
        if self.phase_of is not None:
            group_phase = self.phase_of
        by_key = defaultdict(list)
        for p in group["params"]:
            if p.grad is not None:
                by_key[(p.device, p.dtype)].append(p)
        staged = []
        for (_, dtype), members in by_key.items():
            phase = bucket_phase(group_phase, dtype, group.get("master_weights", True))
            # the kernels see local tensors: FSDP2 shards step where they live
            shards, grads = [local(p) for p in members], [local(p.grad) for p in members]
            names = [f"param {index[p]} (shape {tuple(p.shape)})" for p in members]
            if compensation.compensated(group, dtype):
                compensation.check(group, phase, dtype, names[0])
            backend = backends.for_bucket(opt.backend, shards, grads)
            for p, x, g, name in zip(members, shards, grads, names):
                check_param(x, g, backend, name)
                if phase == Phase.UPDATE_NOISE and is_dtensor(p):
                    raise RuntimeError(
                        f"{name}: mode='noise' keys its noise by element index and does not "
                        "support sharded (FSDP2) parameters; use mode 'local' or 'past'"
                    )
            # whole-tensor norms of sharded tensors: LARS's and LAMB's trust ratios
            group_of_shards = shard_group(members, names) if hyper.whole_tensor_norms else None
            views = any(is_dtensor(p) or p.is_complex() for p in members)
            staged.append(
                Staged(number, group, phase, hyper, backend, members, shards, grads, names, group_of_shards, views)
            )
        return staged

    @staticmethod
    def _work(opt, stage: Staged, index: dict) -> Work:
        """A validated bucket's launch, its missing state created."""
        states = [opt.init_state(p, stage.group, stage.phase) for p in stage.members]
        shards = [as_real(x) for x in stage.shards]
        lists = {"momenta": []}
        for key, name in opt.state_lists(stage.group, stage.phase).items():
            per_tensor = name in ("last_gamma", "recovery")  # (one value, or two: no view of the parameter's shape)
            lists[key] = [st[name] if per_tensor else kernel_view(st[name]) for st in states]
        bucket = Bucket(
            params=shards,
            grads=[as_real(g) for g in stage.grads],
            anchors=[kernel_view(st["anchor"]) if "anchor" in st else x for x, st in zip(shards, states)],
            steps=[st["step"] for st in states],
            indices=[index[p] for p in stage.members],
            names=stage.names,
            shard_group=stage.shard_group,
            master=stage.group.get("master_weights", True) is not False,  # ("compensated": the master's dtypes)
            moment_storage=stage.group.get("exp_avg_dtype"),
            remainders=[kernel_view(st[compensation.KEY]) for st in states if compensation.KEY in st],
            **lists,
        )
        check_bucket(bucket, stage.backend)
        return Work(stage.phase, bucket, stage.hyper, stage.backend)

    def _state_dicts(self, opt) -> tuple[tuple, list[dict]]:
        """What identifies the state of the stepped parameters, with their dicts: which state it is and, where
        it is a TrackedState, its generation (the same generation: the same dicts as when planned; another
        state's dicts are looked up). With the identities of every value in those dicts, in order (compared in
        `matches`), a replaced, added or deleted state tensor or dict, or a replaced state, changes it."""
        state = opt.state
        if isinstance(state, TrackedState):
            return (id(state), state.generation), self.state_dicts
        return (id(state), None), list(map(state.__getitem__, self.stepped))

    def indices(self, phase: Phase) -> frozenset[int]:
        """The optimizer indices of the parameters that `phase` runs on (the phases of a plan's launches
        never change: computed once)."""
        if phase not in self._indices:
            self._indices[phase] = frozenset(
                i for launch in self.launches if launch.work.phase == phase for i in launch.work.bucket.indices
            )
        return self._indices[phase]

    def matches(self, opt, groups: list[dict], params: list[Tensor], grads: list) -> bool:
        """The plan still describes this step. A changed group option that keeps the phase and state
        layout re-derives that group's launch arguments here (validated first: a bad value raises)."""
        if not self.reusable or opt.backend != self.backend or len(groups) != len(self.groups):
            return False
        compare = self.compare
        if not compare.same_objects(params, self.params) or not compare.same_presence(grads, self.present):
            return False
        state_key, dicts = self._state_dicts(opt)
        if state_key != self.state_key or not compare.same_values(dicts, self.state_values):
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
        phase, hyper = opt.launch_args(group)
        if self.phase_of is not None:
            phase = self.phase_of
        for launch in self.by_group[number]:
            old = launch.work
            if (
                old.phase != bucket_phase(phase, old.bucket.dtype, group.get("master_weights", True))
                or (old.bucket.master, bool(old.bucket.remainders))
                != (group.get("master_weights", True) is not False, compensation.compensated(group, old.bucket.dtype))
                or old.hyper.layout() != hyper.layout()
            ):
                return False
        for launch in self.by_group[number]:
            launch.retune(hyper)
        self.group_keys[number] = key
        return True

    def run(self, grads: list, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        if self.launches:
            run_launches(self.launches, grads, grad_scale, found_inf)
        self.fresh = False
