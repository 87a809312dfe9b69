"""extrap-kernels: fused extrapolated-SGD optimizers for PyTorch (docs/SPEC.md).

    from extrap_kernels import ExtrapSGD, FusedSGD, ExtrapAdamW, ExtrapLAMB, FusedAdam, FusedLAMB
"""
from . import backends, functional, reference
from .bucket import Bucket, Hyper, Phase
from .optimizer import ExtrapSGD, FusedOptimizer, FusedSGD
from .adam import ExtrapAdam, ExtrapAdamW, ExtrapLAMB, FusedAdam, FusedLAMB
from .distributed import train_step

__all__ = ["ExtrapSGD", "FusedSGD", "ExtrapAdam", "ExtrapAdamW", "ExtrapLAMB", "FusedAdam", "FusedLAMB", "FusedOptimizer", "Bucket", "Hyper", "Phase", "backends",
           "functional", "reference", "available_backends", "train_step"]
__version__ = "0.1.0"


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on `device` in this process."""
    return backends.available(device)
