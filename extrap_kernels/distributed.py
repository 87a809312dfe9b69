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


def needs_extrapolation_pass(optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer has mode="local" groups, which take a second backward per iteration."""
    return isinstance(optimizer, ExtrapolatingOptimizer) and bool(optimizer._local_groups())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               compute_loss: Callable[[], Tensor]) -> Tensor:
    """One iteration; returns the loss at the anchor x_t. `compute_loss()` runs the forward pass on this
    worker's batch; `model` may be DDP-wrapped (its `no_sync` is used for the local gradient) or not."""
    optimizer.zero_grad(set_to_none=True)
    if needs_extrapolation_pass(optimizer):
        no_sync = getattr(model, "no_sync", contextlib.nullcontext)
        with no_sync():  # the worker's gradient at x_t: no all-reduce
            loss = compute_loss()
            loss.backward()
        optimizer.extrapolate()
        optimizer.zero_grad(set_to_none=True)
        compute_loss().backward()  # the gradient at the extrapolated point: all-reduced
    else:
        loss = compute_loss()
        loss.backward()
    optimizer.step()
    return loss.detach()
