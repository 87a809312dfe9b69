"""Mode "local" under gradient accumulation, refused rather than silently wrong.

The extragradient needs the second gradient taken at the extrapolated point alone. A loop that does not
zero the gradients between extrapolate() and the second backward adds that gradient onto the first:
PyTorch Lightning with `accumulate_grad_batches` > 1 (its closure re-runs only the last micro-batch and
zeroes nothing), or any closure that leaves out zero_grad(). extrapolate() therefore marks the first
element of one gradient with a value no real gradient reaches; step() refuses the iteration where a
backward has added onto it since (the mark's size is still there), and restores the parameters to their
anchors. A zeroed or fresh gradient holds a real gradient's size; an untouched one (the first gradient
reused) is not an accumulation, and gets its element back. Between extrapolate() and the second backward
that one element of the first gradient reads as the mark. Costs one scalar write and one scalar read (a
host synchronization) per local iteration, beside its two backward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sharded import is_dtensor

ACCUMULATED = (
    "mode='local': the gradients were not zeroed between extrapolate() and step(), so the second gradient "
    "was added onto the first (gradient accumulation, e.g. Lightning's accumulate_grad_batches > 1, or a "
    "closure without zero_grad()). The extragradient needs every micro-batch's gradient at the extrapolated "
    "point: use mode='past' with gradient accumulation, or zero the gradients before the second backward. "
    "This iteration was not applied: the parameters are back at their anchors."
)


class Mark:
    """The mark extrapolate() leaves on the first element of the first markable gradient of `params` (a
    dense, real, contiguous, non-empty local tensor), or none where there is no such gradient."""

    def __init__(self, params: list[Tensor]) -> None:
        self.param: Tensor | None = None
        for p in params:
            g = p.grad
            if g is not None and not is_dtensor(g) and not g.is_complex() and g.is_contiguous() and g.numel():
                self.param, self.value, self.original = p, torch.finfo(g.dtype).max / 4, g.view(-1)[0].clone()
                g.view(-1)[0] = self.value
                self.grad, self.version = g, g._version
                return

    def accumulated(self) -> bool:
        """Whether a backward added onto the marked gradient: the parameter's gradient (the same tensor,
        written since, or a new one: an out-of-place accumulation) still holds the mark's size. A zeroed or
        fresh gradient holds a real gradient's. An untouched one is the first gradient, reused: its element
        is given back."""
        g = None if self.param is None else self.param.grad
        if g is None or g.numel() == 0:
            return False
        if g is self.grad and g._version == self.version:
            g.view(-1)[0] = self.original
            return False
        return bool(g[(0,) * g.dim()].abs() >= self.value / 2)
