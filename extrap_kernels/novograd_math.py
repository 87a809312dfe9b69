"""NovoGrad's per-tensor pieces (docs/SPEC.md "NovoGrad"), which the reference (reference_novograd.py) and the
foreach backend share as lamb.py's clipping is shared: each tensor's gradient norm, its running blend, and the
bias corrections."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .hyper import NovoGradHyper
from .lars import whole_tensor_norms


def grad_norm(g: Tensor, h: NovoGradHyper, shard_group=None) -> Tensor:
    """n, the norm of one tensor's gradient: L2 (norm_type 2; of the whole tensor where g is a shard) or
    L-inf (norm_type 0); 0 for an empty tensor."""
    if h.norm_type == 2:
        return whole_tensor_norms(torch.linalg.vector_norm(g).reshape(1), shard_group)[0]
    if shard_group is not None:
        raise ValueError("NovoGrad's L-inf norm (norm_type=0) over sharded tensors is not supported; use norm_type=2")
    return g.abs().amax() if g.numel() else g.new_zeros(())


def blend(n: Tensor, running: Tensor, h: NovoGradHyper) -> Tensor:
    """The running norm after this gradient: L2 sqrt(b2 * gn^2 + (1 - b2) * n^2), L-inf b2 * gn + (1 - b2) * n;
    a norm not yet set (negative: init_zero=False before the first step) becomes n itself. Elementwise: the
    same for one tensor's norm and for a stack of them."""
    b2 = h.betas[1]
    mixed = (b2 * running.square() + (1 - b2) * n.square()).sqrt() if h.norm_type == 2 else b2 * running + (1 - b2) * n
    return torch.where(running < 0, n, mixed)


def corrections(t: int, h: NovoGradHyper) -> tuple[float, float]:
    """1 - b1^t and sqrt(1 - b2^t) after update t (1 and 1 without bias correction)."""
    b1, b2 = h.betas
    return (1 - b1**t, math.sqrt(1 - b2**t)) if h.bias_correction else (1.0, 1.0)
