"""The extension's backends, `cpu` (csrc/cpu) and `cuda` (csrc/cuda): one multi-tensor pass per phase,
called as the PyTorch operator torch.ops.extrap_kernels.<phase>_ (csrc/bindings.cpp). The operator
validates its whole launch in C++ before writing anything and counts the step of an update phase.
The `cuda` backend on CPU tensors (EXTRAP_CUDA_EMULATION=1) calls the same operators of the CUDA launcher's
host emulation instead, registered as torch.ops.extrap_kernels_cuda_emulation.<phase>_."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext, lamb
from ..bucket import Bucket, Hyper, Phase
from ..lars import trust_ratios

OPS = ("extrapolate_", "update_", "update_past_", "update_noise_", "update_past_anchor_free_")  # in Phase order


def extension(backend: str, device: torch.device):
    """The compiled module whose operators run `backend` on `device`: the extension, or for the `cuda`
    backend on CPU tensors the CUDA launcher's host emulation."""
    if backend == "cuda" and device.type == "cpu":
        return _ext.load_cuda_emulation()
    return _ext.load()


def operator(phase: Phase, ext=None):
    """torch.ops.extrap_kernels.<phase>_ (the extension registers it when it is loaded), or the same
    operator of another build `ext` of the bindings."""
    ext = ext or _ext.load()
    return getattr(getattr(torch.ops, ext.ops_namespace), OPS[phase]).default


def _as_int64(seed: int) -> int:
    """The seed's 64 bits as the signed integer the operator takes."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed - 2**64 if seed >= 2**63 else seed


def tensor_args(phase: Phase, b: Bucket) -> tuple:
    """The operator's positional arguments after params and grads: anchors (empty where the parameters
    are their own anchors, plain fused SGD, or where the anchors are recomputed), momenta, steps, indices,
    last_gammas (the anchor-free update's; else empty)."""
    own = phase == Phase.UPDATE_PAST_ANCHOR_FREE or (
        phase == Phase.UPDATE and all(s is x for s, x in zip(b.anchors, b.params)))
    return [] if own else b.anchors, b.momenta, b.steps, b.indices, b.last_gammas


def hyper_kwargs(h: Hyper, b: Bucket) -> dict:
    """The operator's keyword arguments for the hyperparameters (rates as numbers, or as one-element
    tensors of the state dtype on the bucket's device, read by the kernel when it runs)."""
    (lr, lr_tensor), (gamma, gamma_tensor) = h.rate("lr", b), h.rate("gamma", b)
    kwargs = dict(lr=lr, gamma=gamma, lr_tensor=lr_tensor, gamma_tensor=gamma_tensor, momentum=float(h.momentum),
                  dampening=float(h.dampening), weight_decay=float(h.weight_decay), nesterov=bool(h.nesterov),
                  maximize=bool(h.maximize), wd_after_momentum=bool(h.wd_after_momentum),
                  extrapolate_with_momentum=bool(h.extrapolate_with_momentum), past_grad=bool(h.past_grad),
                  noise_std=float(h.noise_std), seed=_as_int64(h.seed), master_weights=b.master)
    if h.base != "sgd":  # Adam, AdamW, LAMB: the momenta are the first moments
        (beta1, beta1_tensor), (beta2, beta2_tensor) = h.kernel_betas(b)
        kwargs.update(second_moments=b.second_moments, max_second_moments=b.max_second_moments, beta1=beta1,
                      beta2=beta2, beta1_tensor=beta1_tensor, beta2_tensor=beta2_tensor, eps=float(h.eps),
                      decoupled=bool(h.decoupled), grad_averaging=bool(h.grad_averaging or h.base != "lamb"),
                      bias_correction=bool(h.bias_correction))
    return kwargs


def prepared_call(phase: Phase, b: Bucket, h: Hyper, kind: str = "run", backend: str = "cpu"):
    """The operator call of `phase` over `b` (kind "run"; "check": its validation alone; "norms": LAMB's
    reading pass, which returns its sums) with every argument converted once but the per-step ones: call
    it as (grads, trust, grad_scale, found_inf). The optimizers' per-step path (extrap_kernels/plan.py):
    it saves converting the parameter and state lists at every step."""
    anchors, momenta, steps, indices, last_gammas = tensor_args(phase, b)
    arguments = dict(params=b.params, anchors=anchors, momenta=momenta, steps=steps, indices=indices,
                     last_gammas=last_gammas, **hyper_kwargs(h, b))
    if kind != "run":
        arguments["phase"] = int(phase)
    return extension(backend, b.device).PreparedCall(OPS[phase] if kind == "run" else kind, arguments)


def apply(phase: Phase, b: Bucket, h: Hyper, grad_scale: Tensor | None = None,
          found_inf: Tensor | None = None, backend: str = "cpu") -> None:
    """One bucket through the operator of its phase."""
    ext, kwargs = extension(backend, b.device), hyper_kwargs(h, b)
    trust = trust_ratios(phase, b, h, grad_scale) if h.lars else None
    norms = getattr(torch.ops, ext.ops_namespace).norms.default
    grad_scale, lamb_trust = lamb.step_inputs(b, h, grad_scale, lambda scale: norms(
        int(phase), b.params, b.grads, *tensor_args(phase, b), **kwargs, grad_scale=scale))
    operator(phase, ext)(b.params, b.grads, *tensor_args(phase, b), **kwargs, trust=trust if lamb_trust is None else lamb_trust,
                         grad_scale=grad_scale, found_inf=found_inf)
