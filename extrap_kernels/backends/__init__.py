"""The one dispatch point: which backend runs a bucket, and what each backend can do.

Every backend has one protocol (calls.py): `prepare(phase, bucket, hyper)` once, for ONE phase over ONE
(device, dtype) bucket, returns a call; the call runs each step with that step's gradients,
`call(grads, grad_scale, found_inf)` (an update phase counts its step first), and `call.check(...)`
validates them alone. A call refuses a step before writing anything (checks.Rejected). The extension's
backends (`cpu`, `cuda`: extension.py) validate in C++; a Python backend's module defines only `apply`,
which calls.ApplyCall validates with checks.check_bucket and calls. "auto" picks the fastest backend
available for the device.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .. import _ext
from ..bucket import Bucket, Phase
from ..checks import Rejected
from ..hyper import Hyper
from .calls import ApplyCall, Call


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # where `prepare` (the extension) or `apply` (a Python backend) lives
    needs_contiguous: bool  # fused kernels walk raw memory
    # the device types it runs on (a function: the emulations' environment is read when asked, not at import)
    devices: Callable[[], tuple[str, ...]] | None  # None: any
    available: Callable[[torch.device], bool]  # can run on this (supported) device in this process
    # writes through torch ops, which count in the parameters' version counters (the kernels' do not: writes.py)
    counts_writes: bool = False

    def prepare(self, phase: Phase, bucket: Bucket, hyper: Hyper) -> Call:
        """The call that runs `phase` over `bucket` with `hyper`, every step (calls.Call)."""
        module = importlib.import_module(self.module, __package__)
        if hasattr(module, "prepare"):
            return module.prepare(phase, bucket, hyper, self)
        return ApplyCall(module.apply, phase, bucket, hyper, self)

    def apply(
        self,
        phase: Phase,
        bucket: Bucket,
        hyper: Hyper,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
    ) -> None:
        """One phase over `bucket` with its own gradients, once (tests, one-off steps): prepare, then call."""
        try:
            self.prepare(phase, bucket, hyper)(bucket.grads, grad_scale, found_inf)
        except Rejected as rejected:  # (the reason itself, as the step would raise it)
            raise rejected.__cause__ from None

    def supports(self, device: torch.device) -> bool:
        return self.devices is None or device.type in self.devices()


def _triton_available(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_devices() -> tuple[str, ...]:
    """Triton compiles for CUDA devices; its interpreter (TRITON_INTERPRET=1) runs on CPU tensors."""
    return ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)


def _cuda_devices() -> tuple[str, ...]:
    """The CUDA launcher runs on CUDA devices; its host emulation (EXTRAP_CUDA_EMULATION=1) on CPU tensors."""
    return ("cuda", "cpu") if _ext.cuda_emulation_requested() else ("cuda",)


BACKENDS = {
    "reference": Backend("reference", "..reference", False, None, lambda device: True, counts_writes=True),
    "foreach": Backend("foreach", ".foreach", False, None, lambda device: True, counts_writes=True),
    "cpu": Backend("cpu", ".extension", True, lambda: ("cpu",), lambda device: _ext.load() is not None),
    "cuda": Backend(
        "cuda",
        ".extension",
        True,
        _cuda_devices,
        lambda device: importlib.import_module(".extension", __package__).cuda_available(device),
    ),
    "triton": Backend("triton", ".triton_kernels", True, _triton_devices, _triton_available),
}


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def available(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run a bucket on `device` in this process."""
    device = torch.device(device)
    return [n for n, b in BACKENDS.items() if b.supports(device) and b.available(device)]


def check_name(name: str) -> None:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + names()}")


def resolve(name: str, device: torch.device) -> Backend:
    """The backend that runs a bucket on `device`; "auto" prefers a fused kernel, else `foreach`."""
    if name == "auto":
        # (on CPU, Triton's interpreter is for testing, never a default)
        for candidate in ("cpu",) if device.type == "cpu" else ("cuda", "triton"):
            backend = BACKENDS[candidate]
            if backend.supports(device) and backend.available(device):
                return backend
        return BACKENDS["foreach"]
    check_name(name)
    backend = BACKENDS[name]
    if not backend.supports(device):
        raise ValueError(f"backend {name!r} does not run on {device.type} tensors")
    if not backend.available(device):
        if name == "cuda" and device.type == "cpu":
            raise RuntimeError(
                f"backend 'cuda' on CPU tensors is the CUDA launcher's host emulation, which is not "
                f"available: {getattr(_ext.load_cuda_emulation, 'error', '')}"
            )
        raise RuntimeError(
            f"backend {name!r} is not available: the extension is not built "
            f"({getattr(_ext.load, 'error', '')}); run `pip install --no-build-isolation -e .` or "
            "set EXTRAP_JIT=1"
        )
    return backend


def for_bucket(name: str, params: list[Tensor], grads: list[Tensor]) -> Backend:
    """The backend for one bucket (every backend has a kernel for every base optimizer); "auto" hands strided
    tensors to `foreach` rather than failing."""
    backend = resolve(name, params[0].device)
    if name == "auto" and backend.needs_contiguous and not all(t.is_contiguous() for t in (*params, *grads)):
        return BACKENDS["foreach"]
    return backend
