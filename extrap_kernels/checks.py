"""The checks of hyperparameters, parameters and buckets, in torch.optim's words where it has them, and
`Rejected`, which a prepared backend call raises when its validation refuses a step before writing
anything. Every check runs before the first write, so a bad input raises with every tensor as it was."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.optim.optimizer import required

from .bucket import SIXTEEN_BIT, SUPPORTED_DTYPES, Bucket, state_dtype

MODES = ("local", "past", "noise")
# torch.optim.SGD's words for its own options ("Invalid learning rate: -0.1"); ours go by their names
_TORCH_WORDING = {"lr": "learning rate", "momentum": "momentum value", "weight_decay": "weight_decay value"}
SPARSE = (
    "sparse gradients are not supported (the fused steps are dense passes over memory): give these "
    "parameters an optimizer of their own that takes sparse gradients (torch.optim.SGD, SparseAdam), "
    "or make their gradients dense (nn.Embedding(..., sparse=False))"
)


def scalar_value(value, name: str = "value") -> float | None:
    """A hyperparameter's value where reading it costs no device synchronization (None: a device tensor,
    read by the kernels). A tensor must have one element (torch.optim's rule) and anything else must be a
    real number: a string or a list is refused here, not at the first step."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return value.item() if value.device.type == "cpu" else None
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid {_TORCH_WORDING.get(name, name)}: {value!r} (must be a real number or a one-element tensor)"
        )
    return float(value)


def check_hyperparameters(**values) -> None:
    """The torch.optim convention: ValueError naming the offending hyperparameter (TypeError for a value
    that is not a number). `required` (an Apex lr each param group must set) passes."""
    for name in ("lr", "gamma", "momentum", "dampening", "weight_decay", "noise_std", "trust_coefficient"):
        if name not in values or values[name] is None or values[name] is required:
            continue
        number = scalar_value(values[name], name)
        if number is not None and not (number >= 0.0 and math.isfinite(number)):
            raise ValueError(f"Invalid {_TORCH_WORDING.get(name, name)}: {values[name]} (must be a finite number >= 0)")
    if values.get("nesterov") and (
        scalar_value(values.get("momentum", 0), "momentum") <= 0
        or scalar_value(values.get("dampening", 0), "dampening") != 0
    ):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if "mode" in values and values["mode"] not in MODES:
        raise ValueError(f"Invalid mode: {values['mode']!r}; choose one of {MODES}")
    if "store_anchor" in values and not isinstance(values["store_anchor"], bool):
        raise TypeError(f"Invalid store_anchor: {values['store_anchor']!r} (must be True or False)")
    if "master_weights" in values and not (
        isinstance(values["master_weights"], bool) or values["master_weights"] == "compensated"
    ):
        raise TypeError(f"Invalid master_weights: {values['master_weights']!r} (must be True, False or 'compensated')")
    if "past" in values and values["past"] not in ("update", "grad"):
        raise ValueError(f"Invalid past: {values['past']!r}; choose 'update' or 'grad'")


MOMENT_DTYPES = (torch.float32, *SIXTEEN_BIT)


def check_moment_dtypes(exp_avg_dtype, exp_avg_sq_dtype) -> None:
    """Transformer Engine's exp_avg_dtype and exp_avg_sq_dtype: fp32 (the default), bf16 or fp16, for now the
    same for both (one launch holds one moment type)."""
    for name, dtype in (("exp_avg_dtype", exp_avg_dtype), ("exp_avg_sq_dtype", exp_avg_sq_dtype)):
        if dtype not in MOMENT_DTYPES:
            raise TypeError(f"Invalid {name}: {dtype!r}; choose one of {MOMENT_DTYPES}")
    if exp_avg_dtype != exp_avg_sq_dtype:
        raise ValueError(
            f"exp_avg_dtype ({exp_avg_dtype}) and exp_avg_sq_dtype ({exp_avg_sq_dtype}) must be the same: "
            "one of them 16-bit and the other fp32 is not supported yet"
        )


def check_param(param: Tensor, grad: Tensor, backend, name: str) -> None:
    """A parameter and its gradient can go through `backend` (a complex one as its real view, as
    torch.optim does: every phase is elementwise)."""
    real = param.dtype.to_real() if param.is_complex() else param.dtype
    if real not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name}: dtype {param.dtype} is not supported; use one of {SUPPORTED_DTYPES} or their complex types"
        )
    if grad.is_sparse or grad.layout != torch.strided:
        raise RuntimeError(f"{name}: {SPARSE}")
    if grad.device != param.device:
        raise RuntimeError(f"{name}: mixed devices: gradient on {grad.device}, parameter on {param.device}")
    if grad.dtype != param.dtype:
        raise TypeError(f"{name}: mismatched dtypes: gradient {grad.dtype}, parameter {param.dtype}")
    if grad.shape != param.shape:
        raise RuntimeError(f"{name}: gradient shape {tuple(grad.shape)} != parameter shape {tuple(param.shape)}")
    if backend.needs_contiguous and not (param.is_contiguous() and grad.is_contiguous()):
        raise RuntimeError(
            f"{name}: backend {backend.name!r} needs contiguous parameters and gradients "
            "(backend='foreach' or 'auto' handles strided ones)"
        )


def check_bucket(bucket: Bucket, backend) -> None:
    """The whole bucket, optimizer state included, can go through `backend`."""
    sdtype, mdtype = bucket.storage_dtype, bucket.moment_dtype
    names = bucket.names or [f"param {i}" for i in bucket.indices]
    wanted = bucket.moment_storage
    if bucket.second_moments and wanted in SIXTEEN_BIT and mdtype != wanted:
        raise RuntimeError(
            f"{names[0]}: 16-bit moments (exp_avg_dtype={wanted}) need fp32, bf16 or fp16 parameters, not "
            f"{bucket.dtype}: put the {bucket.dtype} parameters in a param group with exp_avg_dtype=torch.float32"
        )
    for i, (x, g) in enumerate(zip(bucket.params, bucket.grads)):
        check_param(x, g, backend, names[i])
        if x.dtype != bucket.dtype or x.device != bucket.device:
            raise RuntimeError(f"{names[i]}: mixed devices or dtypes inside one fused bucket")
        state = [
            ("anchor", bucket.anchors[i], sdtype if bucket.anchors[i] is not x else x.dtype),
            ("step", bucket.steps[i], torch.float32),
        ]
        if bucket.momenta:
            adaptive = bucket.second_moments or bucket.grad_norms
            state.append(("exp_avg" if adaptive else "momentum_buffer", bucket.momenta[i], mdtype))
        if bucket.last_gammas:  # (the Adam family's anchor-free update keeps its recovery weights there)
            key = "recovery" if bucket.second_moments else "last_gamma"
            state.append((key, bucket.last_gammas[i], state_dtype(bucket.dtype)))  # (the arithmetic's)
        if bucket.second_moments:
            state.append(("exp_avg_sq", bucket.second_moments[i], mdtype))
        if bucket.max_second_moments:
            state.append(("max_exp_avg_sq", bucket.max_second_moments[i], mdtype))
        if bucket.grad_norms:  # (NovoGrad's per-tensor norm, under Apex's name)
            state.append(("exp_avg_sq", bucket.grad_norms[i], state_dtype(bucket.dtype)))
        if bucket.remainders:  # (the compensated anchor's low halves)
            state.append(("param_remainder", bucket.remainders[i], torch.int16))
        for key, t, dtype in state:
            if t.device != x.device or t.dtype != dtype:
                raise RuntimeError(
                    f"{names[i]}: state {key!r} is {t.dtype} on {t.device}, expected {dtype} on {x.device}"
                )
            per_tensor = key in ("last_gamma", "recovery") or (key == "exp_avg_sq" and bucket.grad_norms)
            elements = 2 if key == "recovery" else 1
            if per_tensor and t.numel() != elements:
                raise RuntimeError(f"{names[i]}: state {key!r} must have {elements} element{'s' * (elements > 1)}")
            if (
                key != "step"
                and not per_tensor
                and (t.shape != x.shape or (backend.needs_contiguous and not t.is_contiguous()))
            ):
                raise RuntimeError(f"{names[i]}: state {key!r} does not match the parameter's shape/layout")


class Rejected(Exception):
    """A launch's validation refused the step before anything was written (the cause says why)."""
