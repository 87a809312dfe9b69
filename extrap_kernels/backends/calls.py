"""The backend protocol's call: one phase over one bucket, prepared once and called every step.

A call is made by `Backend.prepare(phase, bucket, hyper)` and then called with each step's gradients (new
tensors every step under zero_grad(set_to_none=True)) as `call(grads, grad_scale, found_inf)`. It refuses a
step before writing anything, raising checks.Rejected with the reason as its cause; `call.check(...)`
runs that validation alone, so that a step of several calls validates all of them before the first
writes (and then calls them with checked=True). LAMB's calls read the step's global gradient norm from
`global_grad_norm`, set before each call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import Tensor

from .. import compensation
from ..bucket import Bucket, Phase
from ..checks import Rejected, check_bucket
from ..hyper import Hyper

REFUSALS = (RuntimeError, ValueError, TypeError, NotImplementedError)


class Call:
    """What every backend's prepared call does (the protocol); ApplyCall and extension.ExtensionCall
    implement it."""

    global_grad_norm: Tensor | None = None

    def check(self, grads: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        """Raises Rejected, writing nothing, if the step would be refused."""
        raise NotImplementedError

    def __call__(
        self, grads: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None, checked: bool = False
    ) -> None:
        """Runs the phase with this step's gradients (`checked`: check() has passed for them)."""
        raise NotImplementedError


class ApplyCall(Call):
    """A Python backend's call (reference, foreach, triton): its module's `apply(phase, bucket, hyper,
    grad_scale, found_inf)` on the bucket with this step's gradients, validated by checks.check_bucket."""

    def __init__(self, apply: Callable, phase: Phase, bucket: Bucket, hyper: Hyper, backend) -> None:
        self.apply, self.phase, self.bucket, self.hyper, self.backend = apply, phase, bucket, hyper, backend
        self.global_grad_norm = bucket.global_grad_norm

    def check(self, grads, grad_scale, found_inf) -> None:
        try:
            check_bucket(replace(self.bucket, grads=list(grads)), self.backend)
        except REFUSALS as err:
            raise Rejected() from err

    def __call__(self, grads, grad_scale, found_inf, checked: bool = False) -> None:
        if not checked:
            self.check(grads, grad_scale, found_inf)
        bucket = replace(self.bucket, grads=list(grads), global_grad_norm=self.global_grad_norm)
        if bucket.remainders and self.backend.name in compensation.ON_FULL:  # (over the parameters' fp32 values)
            return compensation.apply_on_full(self.apply, self.phase, bucket, self.hyper, grad_scale, found_inf)
        self.apply(self.phase, bucket, self.hyper, grad_scale, found_inf)
