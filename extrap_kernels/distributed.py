"""Data-parallel EXTRAP-SGD (torch.distributed DDP): the right iteration in one call.

In mode "local" the extrapolation uses the worker's OWN gradient (the backward runs inside
`model.no_sync()`, so DDP does not all-reduce it) and the update uses the all-reduced gradient at the
extrapolated point: exactly one gradient all-reduce per iteration, as in the paper's distributed
algorithm. Modes "past" and "noise" (and any other optimizer) take one ordinary DDP backward.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor

from .optimizer import ExtrapolatingOptimizer


def unwrapped(optimizer):
    """The optimizer inside the wrappers that hold it as `.optimizer` (accelerate's AcceleratedOptimizer,
    Lightning's LightningOptimizer), or `optimizer` itself."""
    for _ in range(8):  # (a wrapper of a wrapper at most a few deep; a cycle ends here too)
        if isinstance(optimizer, ExtrapolatingOptimizer):
            break
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def needs_extrapolation_pass(optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer (or the one a wrapper holds) has mode="local" groups, which take a second backward per
    iteration."""
    optimizer = unwrapped(optimizer)
    return isinstance(optimizer, ExtrapolatingOptimizer) and bool(optimizer.local_groups())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, compute_loss: Callable[[], Tensor]) -> Tensor:
    """One iteration; returns the loss at the anchor x_t. `compute_loss()` runs the forward pass on this
    worker's batch; `model` may be DDP-wrapped (its `no_sync` is used for the local gradient) or not, and
    `optimizer` wrapped by a framework that holds it as `.optimizer` (its step() and zero_grad() are used)."""
    optimizer.zero_grad(set_to_none=True)
    if needs_extrapolation_pass(optimizer):
        if getattr(optimizer, "scaler", None) is not None:  # (accelerate's fp16 mixed precision)
            raise RuntimeError(
                "train_step: mode='local' under the wrapper's GradScaler would extrapolate along "
                "scaled gradients; use mode='past' (one backward per step, which the scaler "
                "handles), or train without loss scaling (bf16)"
            )
        no_sync = getattr(model, "no_sync", contextlib.nullcontext)
        with no_sync():  # the worker's gradient at x_t: no all-reduce
            loss = compute_loss()
            loss.backward()
        unwrapped(optimizer).extrapolate()
        optimizer.zero_grad(set_to_none=True)
        compute_loss().backward()  # the gradient at the extrapolated point: all-reduced
    else:
        loss = compute_loss()
        loss.backward()
    optimizer.step()
    return loss.detach()
