"""The `triton` backend: one Triton launch per phase covers a whole (device, dtype) bucket. The kernels of
each base family live in their own module (triton_sgd.py, triton_adaptive.py) over what they share
(triton_common.py); this module is the backend's entry point, dispatching on the base once.
"""

from __future__ import annotations

from torch import Tensor

from ..bucket import Bucket, Phase
from ..hyper import Hyper
from .triton_adaptive import apply_adaptive
from .triton_sgd import apply_sgd

_APPLY = {"sgd": apply_sgd, **dict.fromkeys(("adam", "lamb", "adagrad", "novograd"), apply_adaptive)}


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    """One phase over bucket `b` (backends.calls.ApplyCall calls it, validated)."""
    _APPLY[h.base](phase, b, h, grad_scale, found_inf)
