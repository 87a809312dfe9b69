"""The `cuda` backend: the C++/CUDA extension (csrc/cuda), one multi-tensor launch per phase per
192 tensors or 2560 chunks of 64K elements (a whole ResNet-50 or GPT-2 small parameter list), on the
caller's current stream. The same operators as the `cpu` backend: the dispatcher picks the kernel.
With EXTRAP_CUDA_EMULATION=1 it also runs on CPU tensors, through the host emulation of the same
launcher and kernels (csrc/emulation): how the tests check the device code without a GPU."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext
from ..bucket import Bucket, Hyper, Phase
from . import cpu


def available(device: torch.device) -> bool:
    if device.type == "cpu":
        return _ext.cuda_emulation_requested() and _ext.load_cuda_emulation() is not None
    ext = _ext.load()
    return ext is not None and bool(getattr(ext, "has_cuda", False)) and torch.cuda.is_available()


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None,
          found_inf: Tensor | None = None) -> None:
    cpu.apply(phase, b, h, grad_scale, found_inf, backend="cuda")
