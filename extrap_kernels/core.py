"""The functional core: validate every launch of a step, then run them.

A launch is one phase over one (device, dtype) bucket with its group's hyperparameters, on one backend
(`Work`), prepared once (the backend protocol, backends/calls.py) and called with each step's gradients.
A step of several launches validates all of them before the first writes, so a refusal leaves every tensor
as it was and raises checks.Rejected. LAMB's global gradient norm, which reads every launch's gradients,
is taken between the two. The optimizer classes keep their launches in a cached plan (plan.py); `run`
builds them for one call.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch
from torch import Tensor

from .backends import Backend
from .backends.calls import REFUSALS
from .bucket import Bucket, Phase, state_dtype
from .checks import Rejected
from .hyper import Hyper
from .norms import squares
from .sharded import kernel_view


class Work(NamedTuple):
    """One launch: a phase over one bucket with its group's hyperparameters, on one backend."""

    phase: Phase
    bucket: Bucket
    hyper: Hyper
    backend: Backend


def _device(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


class Launch:
    """A `Work` prepared on its backend, and where its gradients are in the step's flat gradient list
    (`positions`; None: the bucket's own gradients)."""

    def __init__(self, work: Work, positions: list[int] | None = None, total: int = 0, views: bool = False):
        self.views = views  # DTensor or complex parameters: the gradients' kernel views are taken per step
        if positions is None:
            self.pick = lambda flat: work.bucket.grads
        elif len(positions) == total and positions == list(range(total)):
            self.pick = lambda flat: flat  # every gradient of the step, in order: the common case
        elif len(positions) == 1:
            position = positions[0]
            self.pick = lambda flat: [flat[position]]
        else:
            self.pick = operator.itemgetter(*positions)
        self.retune(work.hyper, work)

    def retune(self, hyper: Hyper, work: Work | None = None) -> None:
        """Takes a group's new hyperparameters (same phase and state layout): prepared anew."""
        self.work = (work or self.work)._replace(hyper=hyper)
        phase, bucket, _, backend = self.work
        self.call = backend.prepare(phase, bucket, hyper)
        self.clips = hyper.clips  # needs the global gradient norm

    def grads(self, flat: list) -> list[Tensor]:
        grads = self.pick(flat)
        return [kernel_view(g) for g in grads] if self.views else grads


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
            launch.call.global_grad_norm = norm


def run_launches(launches: list[Launch], flat_grads: list, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    """Validates every launch, then runs them (one launch validates itself as it runs). A refusal, before
    anything is written, raises Rejected."""
    grads = [launch.grads(flat_grads) for launch in launches]
    amp = [
        (_device(grad_scale, launch.work.bucket.device), _device(found_inf, launch.work.bucket.device))
        for launch in launches
    ]
    checked = len(launches) > 1
    if checked:
        for launch, g, (scale, inf) in zip(launches, grads, amp):
            launch.call.check(g, scale, inf)
    try:
        clip(launches, grads)
    except REFUSALS as err:  # (an unchecked launch's gradients: refused before anything is written)
        raise Rejected() from err
    for launch, g, (scale, inf) in zip(launches, grads, amp):
        launch.call(g, scale, inf, checked=checked)


def run(work: list[Work], grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    """Runs every launch with its bucket's own gradients, after checking all of them. Update phases count
    their step first and, where found_inf is set, do not count it (on the device: no host sync)."""
    try:
        run_launches([Launch(w) for w in work], [], grad_scale, found_inf)
    except Rejected as rejected:
        raise rejected.__cause__ from None
