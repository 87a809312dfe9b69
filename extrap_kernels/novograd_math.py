"""NovoGrad's per-tensor pieces (docs/SPEC.md "NovoGrad"), which the reference (reference_novograd.py) and the
backends share as lamb.py's clipping is shared: each tensor's gradient norm, its running blend, the bias
corrections, and for the fused backends the blended norms of a whole bucket, which their launch takes in place of
LAMB's trust ratios (the per-element pass then moves only x, g, s and m)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bucket import Bucket, state_dtype
from .hyper import NovoGradHyper
from .lars import whole_tensor_norms
from .norms import two_norms


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


def running_norms(b: Bucket, h: NovoGradHyper, grad_scale: Tensor | None) -> Tensor:
    """Each tensor's running norm after this step's gradient (blend of its unscaled norm), one [tensors] stack of
    the state dtype on the bucket's device, with no host synchronization and nothing stored (store_norms does,
    once the update has run). The L2 norms are one multi-tensor pass (norms.two_norms); the L-inf ones skip empty
    tensors, whose norm is 0 (torch's has no identity for them)."""
    dtype = state_dtype(b.dtype)
    if h.norm_type == 2:
        n = whole_tensor_norms(two_norms(b.grads, dtype), b.shard_group)
    else:
        if b.shard_group is not None:
            grad_norm(b.grads[0], h, b.shard_group)  # (its refusal)
        n = torch.zeros(len(b.grads), dtype=dtype, device=b.device)
        filled = [i for i, g in enumerate(b.grads) if g.numel()]
        if filled:
            inf_norms = torch._foreach_norm([b.grads[i] for i in filled], math.inf, dtype=dtype)
            n[filled] = torch.stack(inf_norms)
    if grad_scale is not None:
        n = n / grad_scale.to(dtype)
    return blend(n, torch.stack(b.grad_norms), h)


def store_norms(b: Bucket, norms: Tensor, found_inf: Tensor | None) -> None:
    """An update's running norms into the parameters' states (a skipped update, found_inf, keeps the old ones)."""
    if found_inf is not None:
        norms = torch.where(found_inf.to(norms.device) != 0, torch.stack(b.grad_norms), norms)
    torch._foreach_copy_(b.grad_norms, list(norms.unbind()))
