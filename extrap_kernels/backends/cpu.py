"""The `cpu` backend: the fused C++ kernel (csrc/cpu), one multi-tensor pass per phase."""
from __future__ import annotations

from torch import Tensor

from .. import _ext
from ..bucket import Bucket, Hyper, Phase
from ..lars import trust_ratios


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    """Hands one bucket to the extension, which checks it and runs the launcher of its device."""
    inv_scale = grad_scale.reciprocal() if grad_scale is not None else 1.0
    trust = trust_ratios(phase, b, h, inv_scale) if h.lars else None
    _ext.load().apply(
        int(phase), b.params, b.grads, b.anchors, b.momenta, b.steps, b.indices, trust,
        float(h.lr), float(h.gamma), float(h.momentum), float(h.dampening), float(h.weight_decay),
        bool(h.nesterov), bool(h.maximize), bool(h.wd_after_momentum), bool(h.extrapolate_with_momentum),
        bool(h.past_grad), float(h.noise_std), int(h.seed), grad_scale, found_inf,
    )

