"""The `cuda` backend: the C++/CUDA extension (csrc/cuda), one multi-tensor launch per phase per
192 tensors or 2560 chunks of 64K elements (a whole ResNet-50 or GPT-2 small parameter list), on the
caller's current stream. The same operators as the `cpu` backend: the dispatcher picks the kernel."""
from __future__ import annotations

import torch

from .cpu import apply  # noqa: F401  (one operator per phase, registered for CPU and CUDA)


def available() -> bool:
    from .. import _ext

    ext = _ext.load()
    return ext is not None and bool(getattr(ext, "has_cuda", False)) and torch.cuda.is_available()
