"""The extension's backends, `cpu` (csrc/cpu) and `cuda` (csrc/cuda), one backend in two builds: one
multi-tensor pass per phase, the PyTorch operator torch.ops.extrap_kernels.<phase>_ (the adaptive bases':
adam_<phase>_; csrc/bindings.cpp), the dispatcher picking the device's kernel. The operator validates its
whole launch in C++ before writing anything and counts the step of an update phase. `cuda` launches once
per 192 tensors or 2560 chunks of 64K elements (a whole ResNet-50 or GPT-2 small parameter list) on the
caller's current stream. On CPU tensors (EXTRAP_CUDA_EMULATION=1) it calls the same operators of the CUDA
launcher's host emulation (csrc/emulation), torch.ops.extrap_kernels_cuda_emulation.<phase>_: how the tests
check the device code without a GPU."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import _ext, lamb, novograd_math
from ..bucket import Bucket, Phase
from ..checks import Rejected
from ..hyper import Hyper
from ..lars import trust_ratios
from .calls import REFUSALS, Call

OPS = ("extrapolate_", "update_", "update_past_", "update_noise_", "update_past_anchor_free_")  # in Phase order


def cuda_available(device: torch.device) -> bool:
    if device.type == "cpu":
        return _ext.cuda_emulation_requested() and _ext.load_cuda_emulation() is not None
    ext = _ext.load()
    return ext is not None and bool(getattr(ext, "has_cuda", False)) and torch.cuda.is_available()


def extension(backend: str, device: torch.device):
    """The compiled module whose operators run `backend` on `device`: the extension, or for the `cuda`
    backend on CPU tensors the CUDA launcher's host emulation."""
    if backend == "cuda" and device.type == "cpu":
        return _ext.load_cuda_emulation()
    return _ext.load()


def operator(phase: Phase, ext=None, prefix: str = ""):
    """torch.ops.extrap_kernels.<prefix><phase>_ (the extension registers it when it is loaded; `prefix`:
    the base family's, Hyper.operator_prefix), or the same operator of another build `ext` of the bindings."""
    ext = ext or _ext.load()
    return getattr(getattr(torch.ops, ext.ops_namespace), prefix + OPS[phase]).default


def tensor_args(phase: Phase, b: Bucket) -> tuple:
    """The operator's positional arguments after params and grads: anchors (empty where the parameters
    are their own anchors, plain fused SGD, or where the anchors are recomputed; a compensated bucket's int16
    remainders, which the kernels join with x: csrc/launch.h's compensated), momenta, steps, indices, last_gammas
    (the anchor-free update's; else empty)."""
    own = phase == Phase.UPDATE_PAST_ANCHOR_FREE or (
        phase == Phase.UPDATE and all(s is x for s, x in zip(b.anchors, b.params))
    )
    anchors = b.remainders or ([] if own else b.anchors)
    return anchors, b.momenta, b.steps, b.indices, b.last_gammas


def prepared_call(phase: Phase, b: Bucket, h: Hyper, kind: str = "run", backend: str = "cpu"):
    """The operator call of `phase` over `b` (kind "run"; "check": its validation alone; "norms": LAMB's
    reading pass, which returns its sums) with every argument converted once but the per-step ones: call
    it as (grads, trust, grad_scale, found_inf). The optimizers' per-step path (extrap_kernels/plan.py):
    it saves converting the parameter and state lists at every step."""
    anchors, momenta, steps, indices, last_gammas = tensor_args(phase, b)
    arguments = dict(
        params=b.params,
        anchors=anchors,
        momenta=momenta,
        steps=steps,
        indices=indices,
        last_gammas=last_gammas,
        master_weights=b.master,
        **h.operator_kwargs(b),  # (rates as numbers, or as device tensors that the kernel reads)
    )
    if kind != "run":
        arguments["phase"] = int(phase)
    name = h.operator_prefix + (OPS[phase] if kind == "run" else kind)  # (the base family's operator)
    return extension(backend, b.device).PreparedCall(name, arguments)


class ExtensionCall(Call):
    """The operator of a phase over a bucket, its unchanging arguments converted once (prepared_call).
    LARS's and LAMB's trust ratios are computed per step on the device (LAMB's from the extension's reading
    pass, the operator `adam_norms`), as are NovoGrad's running norms (stored once the update has run), then
    the operator runs. A call validates its launch in C++ as it runs, unless check() has already (`checked`: a
    step of several buckets checks them all first)."""

    def __init__(self, phase: Phase, bucket: Bucket, hyper: Hyper, backend) -> None:
        self.phase, self.bucket, self.hyper, self.backend = phase, bucket, hyper, backend.name
        self.global_grad_norm = bucket.global_grad_norm
        self._calls: dict[str, object] = {}  # kind -> prepared_call
        # A rate tensor converted to the bucket's device and dtype is a copy (as are capturable betas, in
        # float64): the call is then prepared anew each step, to read its value.
        self.live_rates = any(value.data_ptr() != kernel.data_ptr() for value, kernel in hyper.device_values(bucket))
        # the per-step inputs of the base: LARS's trust ratios, or LAMB's clipping and trust ratios
        self.lamb_inputs = not hyper.lars and (hyper.clips or hyper.scales_by_trust)

    def _call(self, kind: str = "run"):
        call = self._calls.get(kind)
        if call is None:
            call = prepared_call(self.phase, self.bucket, self.hyper, kind=kind, backend=self.backend)
            if not self.live_rates:
                self._calls[kind] = call
        return call

    def check(self, grads, grad_scale, found_inf) -> None:
        # (NovoGrad's launch takes its running norms where the trust ratios go: the stored ones stand in)
        trust = torch.stack(self.bucket.grad_norms) if self.hyper.blends_grad_norms else None
        try:
            self._call("check")(grads, trust, grad_scale, found_inf)
        except REFUSALS as err:
            raise Rejected() from err

    def __call__(self, grads, grad_scale, found_inf, checked: bool = False) -> None:
        # `checked`: check() passed for these gradients, and the operators do not validate them again
        phase, bucket, hyper = self.phase, self.bucket, self.hyper
        loss_scale = grad_scale  # (AMP's: the kernel writes the gradients back unscaled by it; LAMB folds its
        # clipping into the grad_scale it divides by)
        try:
            trust = None
            if hyper.lars:
                trust = trust_ratios(phase, replace(bucket, grads=list(grads)), hyper, grad_scale)
            elif hyper.blends_grad_norms:  # (validated first: the norms read the gradients)
                if not checked:
                    self.check(grads, grad_scale, found_inf)
                    checked = True
                trust = novograd_math.running_norms(replace(bucket, grads=list(grads)), hyper, grad_scale)
            elif self.lamb_inputs:
                norms = self._call("norms")
                grad_scale, trust = lamb.step_inputs(
                    replace(bucket, global_grad_norm=self.global_grad_norm),
                    hyper,
                    grad_scale,
                    lambda scale: norms(grads, None, scale, None, checked),
                )
            self._call()(grads, trust, grad_scale, found_inf, checked, loss_scale)
            if hyper.blends_grad_norms and phase != Phase.EXTRAPOLATE:
                novograd_math.store_norms(bucket, trust, found_inf)
        except (ValueError, TypeError, NotImplementedError) as err:  # its checks (csrc/bindings.cpp)
            raise Rejected() from err


def prepare(phase: Phase, bucket: Bucket, hyper: Hyper, backend) -> ExtensionCall:
    return ExtensionCall(phase, bucket, hyper, backend)
