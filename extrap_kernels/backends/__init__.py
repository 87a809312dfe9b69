"""The one dispatch point: which backend runs a bucket, and what each backend can do.

Every backend has the same entry, `apply(phase, bucket, hyper, grad_scale, found_inf)`, which runs
ONE phase over ONE (device, dtype) bucket (an update phase counts its step first). "auto" picks the
fastest one available for the device. The extension's backends (`cpu`, `cuda`) validate each launch in
C++ (`validates`); the others are validated by functional.check_bucket.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import _ext


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # where `apply` lives
    needs_contiguous: bool  # fused kernels walk raw memory
    devices: tuple[str, ...] | None  # device types it runs on; None: any
    available: Callable[[torch.device], bool]  # can run on this (supported) device in this process
    validates: bool = False  # the extension's operators check every launch themselves (csrc/bindings.cpp)
    bases: tuple[str, ...] = ("sgd",)  # the base optimizers it has a kernel for (bucket.Hyper.base)

    @property
    def apply(self):
        return importlib.import_module(self.module, __package__).apply

    def supports(self, device: torch.device) -> bool:
        return self.devices is None or device.type in self.devices


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


EVERY_BASE = ("sgd", "adam", "lamb")
BACKENDS = {
    "reference": Backend("reference", "..reference", False, None, lambda device: True, bases=EVERY_BASE),
    "foreach": Backend("foreach", ".foreach", False, None, lambda device: True, bases=EVERY_BASE),
    "cpu": Backend("cpu", ".cpu", True, ("cpu",), lambda device: _ext.load() is not None, validates=True,
                   bases=EVERY_BASE),
    "cuda": Backend("cuda", ".cuda", True, _cuda_devices(),
                    lambda device: importlib.import_module(".cuda", __package__).available(device), validates=True,
                    bases=EVERY_BASE),
    "triton": Backend("triton", ".triton_kernels", True, _triton_devices(), _triton_available, bases=EVERY_BASE),
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
            raise RuntimeError(f"backend 'cuda' on CPU tensors is the CUDA launcher's host emulation, which is not "
                               f"available: {getattr(_ext.load_cuda_emulation, 'error', '')}")
        raise RuntimeError(f"backend {name!r} is not available: the extension is not built "
                           f"({getattr(_ext.load, 'error', '')}); run `pip install --no-build-isolation -e .` or "
                           "set EXTRAP_JIT=1")
    return backend
