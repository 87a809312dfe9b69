"""The `cuda` backend: the C++/CUDA extension (csrc/cuda), one multi-tensor launch per phase per
192 tensors or 2560 chunks of 64K elements (a whole ResNet-50 or GPT-2 small parameter list), on the caller's current stream."""
from __future__ import annotations

import torch
from torch import Tensor

from ..bucket import Bucket, Hyper, Phase
from ..lars import trust_ratios
from . import cpu


def available() -> bool:
    from .. import _ext

    ext = _ext.load()
    return ext is not None and bool(getattr(ext, "has_cuda", False)) and torch.cuda.is_available()


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None,
          found_inf: Tensor | None = None) -> None:
    with torch.cuda.device(b.device):
        stream = torch.cuda.current_stream(b.device).cuda_stream
        cpu.launch(phase, b, h, _float32(grad_scale), _float32(found_inf), stream=stream)


def _float32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float32)
