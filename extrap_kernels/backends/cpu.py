"""The `cpu` backend: the fused C++ kernel (csrc/cpu), one multi-tensor pass per phase."""
from __future__ import annotations

from torch import Tensor

from .. import _ext
from ..bucket import Bucket, Hyper, Phase
from ..lars import trust_ratios


def _as_int64(seed: int) -> int:
    """The seed's 64 bits as the signed integer the binding takes."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed - 2**64 if seed >= 2**63 else seed


def launch(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None, found_inf: Tensor | None,
           stream: int = 0) -> None:
    """Hands one bucket to the extension, which checks it and runs the launcher of its device."""
    trust = trust_ratios(phase, b, h, grad_scale) if h.lars else None
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    _ext.load().apply(
        int(phase), b.params, b.grads, b.anchors, b.momenta, b.steps, b.indices, trust,
        lr, gamma, float(h.momentum), float(h.dampening), float(h.weight_decay),
        bool(h.nesterov), bool(h.maximize), bool(h.wd_after_momentum), bool(h.extrapolate_with_momentum),
        bool(h.past_grad), float(h.noise_std), _as_int64(h.seed), grad_scale, found_inf, stream,
        lr_tensor, gamma_tensor,
    )


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None,
          found_inf: Tensor | None = None) -> None:
    launch(phase, b, h, grad_scale, found_inf)

