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


def make_launch(**fields):
    """The extension's `Launch`, filled by field name (an unknown name raises AttributeError)."""
    launch_ = _ext.load().Launch()
    for name, value in fields.items():
        setattr(launch_, name, value)
    return launch_


def launch(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None, found_inf: Tensor | None,
           stream: int = 0) -> None:
    """Hands one bucket to the extension, which checks it and runs the launcher of its device."""
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    _ext.load().apply(make_launch(
        phase=int(phase), params=b.params, grads=b.grads, anchors=b.anchors, momenta=b.momenta, steps=b.steps,
        indices=b.indices, trust=trust_ratios(phase, b, h, grad_scale) if h.lars else None,
        lr=lr, gamma=gamma, lr_tensor=lr_tensor, gamma_tensor=gamma_tensor, momentum=float(h.momentum),
        dampening=float(h.dampening), weight_decay=float(h.weight_decay), nesterov=bool(h.nesterov),
        maximize=bool(h.maximize), wd_after_momentum=bool(h.wd_after_momentum),
        extrapolate_with_momentum=bool(h.extrapolate_with_momentum), past_grad=bool(h.past_grad),
        noise_std=float(h.noise_std), seed=_as_int64(h.seed), grad_scale=grad_scale, found_inf=found_inf,
        stream=stream))


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None,
          found_inf: Tensor | None = None) -> None:
    launch(phase, b, h, grad_scale, found_inf)

