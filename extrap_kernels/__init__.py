"""extrap-kernels: fused extrapolated-SGD optimizers for PyTorch (docs/SPEC.md).

from extrap_kernels import ExtrapSGD, FusedSGD, ExtrapAdamW, ExtrapLAMB, FusedAdam, FusedLAMB, FusedAdagrad
"""

import torch as _torch
from torch.torch_version import TorchVersion as _TorchVersion

# The oldest torch this package is built and tested against (make gpu-image-check: 2.11.0, the lent GPU
# image's; make test: the Makefile's TORCH_VERSION). Older ones were never built or tested: refused here
# with the reason rather than failing somewhere later.
OLDEST_TORCH = (2, 11)

if _TorchVersion(_torch.__version__) < OLDEST_TORCH:
    raise ImportError(
        f"extrap-kernels needs torch >= {'.'.join(map(str, OLDEST_TORCH))}; this Python has torch "
        f"{_torch.__version__}. Upgrade torch (pip install 'torch>=2.11'), then rebuild this package "
        "against it: pip install --no-build-isolation --no-deps ."
    )

from . import backends, core, functional, reference  # noqa: E402
from .adagrad import ExtrapAdagrad, FusedAdagrad  # noqa: E402
from .adam import ExtrapAdam, ExtrapAdamW, ExtrapLAMB, FusedAdam, FusedLAMB  # noqa: E402
from .bucket import Bucket, Phase  # noqa: E402
from .distributed import train_step  # noqa: E402
from .hyper import AdagradHyper, AdamHyper, Hyper, LambHyper, NovoGradHyper, SGDHyper  # noqa: E402
from .mixed_precision_lamb import FusedMixedPrecisionLamb  # noqa: E402
from .novograd import ExtrapNovoGrad, FusedNovoGrad  # noqa: E402
from .optimizer import ExtrapSGD, FusedOptimizer, FusedSGD  # noqa: E402

__all__ = [
    "ExtrapSGD",
    "FusedSGD",
    "ExtrapAdam",
    "ExtrapAdamW",
    "ExtrapLAMB",
    "FusedAdam",
    "FusedLAMB",
    "ExtrapAdagrad",
    "FusedAdagrad",
    "FusedMixedPrecisionLamb",
    "ExtrapNovoGrad",
    "FusedNovoGrad",
    "FusedOptimizer",
    "Bucket",
    "Hyper",
    "SGDHyper",
    "AdamHyper",
    "LambHyper",
    "AdagradHyper",
    "NovoGradHyper",
    "Phase",
    "backends",
    "core",
    "functional",
    "reference",
    "available_backends",
    "train_step",
]
__version__ = "0.1.0"


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on `device` in this process."""
    return backends.available(device)
