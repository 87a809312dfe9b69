"""Shared test helpers: hypothesis profiles, dtype-derived tolerances, random parameter sets."""

from __future__ import annotations

import math
import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter; it is chosen when the
# kernels are defined, so before extrap_kernels is imported.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
# Likewise the CUDA launcher and kernels run on CPU tensors in their host emulation (csrc/emulation), built
# just in time: the `cuda` backend is then one of the CPU backends below, under every test that runs them.
os.environ.setdefault("EXTRAP_CUDA_EMULATION", "1")
from hypothesis import HealthCheck, settings

import extrap_kernels as ek
from extrap_kernels import recovery

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("EXTRAP_EXAMPLES", "100")),
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def examples_for(backend: str) -> int:
    """Hypothesis examples of a many-step test over `backend`: a quarter of the profile's under Triton's
    interpreter, which takes about 10 ms a program (it patches triton.language at every nested jit call)
    where the compiled backends take microseconds. The interpreted kernels are the compiled ones' source,
    and its one-step tests keep the full count."""
    examples = settings.default.max_examples
    return max(10, examples // 4) if backend == "triton" and TRITON_INTERPRETED else examples


def steps_for(backend: str, steps: int) -> int:
    """The steps of a fixed-case comparison over `backend`: a third under Triton's interpreter (examples_for
    says why), at least 5."""
    return max(5, steps // 3) if backend == "triton" and TRITON_INTERPRETED else steps


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
GPU_BACKENDS = [b for b in ("cuda", "triton") if torch.cuda.is_available() and b in ek.available_backends("cuda")]
# Backends under test against the reference on this machine: every one that runs on CPU here.
CPU_BACKENDS = [b for b in ek.available_backends("cpu") if b != "reference"]

# Elementary roundings per element per step in the SGD-family update (g*scale, +wd*s, *trust,
# momentum mul/add, nesterov add, lr*d, s-, gamma*e, x-): each contributes at most eps/2 relative to
# a value bounded by the tracked magnitude M; 12 covers them with margin for the norm of LARS.
ROUNDINGS_PER_STEP = 12


def state_eps(dtype: torch.dtype) -> float:
    return torch.finfo(ek.bucket.state_dtype(dtype)).eps


def trajectory_tolerance(
    dtype: torch.dtype, steps: int, magnitude: float, momentum: float, lars_numel: int = 0
) -> float:
    """Absolute error bound of a `steps`-long trajectory in the state precision against the exact
    (float64) one: every step adds ROUNDINGS_PER_STEP * eps * M, and an error in the momentum buffer
    keeps acting for 1 / (1 - mu) steps. With LARS (lars_numel = the largest tensor), the trust ratio
    is a quotient of two norms whose tree-summed squares carry up to (log2(n) + 1) eps each."""
    amplification = 1.0 / (1.0 - momentum) if momentum else 1.0
    roundings = ROUNDINGS_PER_STEP + (2 * (math.log2(lars_numel) + 1) if lars_numel > 1 else 0)
    return steps * roundings * state_eps(dtype) * magnitude * amplification


def noise_tolerance(noise_std: float) -> float:
    """The normals are float32 by definition, equal across backends up to the float32 rounding of
    log and cos (SPEC): a few float32 ulps of |xi| <= sqrt(-2 ln 1e-7) < 5.7, times sigma."""
    return noise_std * 5.7 * 4 * torch.finfo(torch.float32).eps


def output_ulp(dtype: torch.dtype, reference: torch.Tensor) -> torch.Tensor:
    """One unit of rounding of the stored parameter dtype at the reference's magnitude: a value
    computed in fp32 and in fp64 may round to neighbouring 16-bit numbers."""
    if dtype in (torch.float32, torch.float64):
        return torch.zeros_like(reference)
    return torch.finfo(dtype).eps * reference.abs() + torch.finfo(dtype).tiny


def assert_within(actual: torch.Tensor, expected: torch.Tensor, atol, what: str) -> None:
    err = (actual.double() - expected.double()).abs()
    bound = torch.as_tensor(atol, dtype=torch.float64) + torch.zeros_like(err)
    bad = err > bound
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} elements off; first at {i}: "
            f"{actual.flatten()[i].item()} vs {expected.flatten()[i].item()} "
            f"(err {err.flatten()[i].item():.3g} > {bound.flatten()[i].item():.3g})"
        )


def anchor_of(state: dict, param: torch.Tensor, opt: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """s_t of a parameter's optimizer state, in float64: stored, or (anchor-free past) recovered: the SGD
    family's x + last_gamma * m, the Adam family's from x, the moments and "recovery" (`opt` gives the group)."""
    if "anchor" in state:
        return state["anchor"].double()
    if recovery.KEY in state:
        group = next(g for g in opt.param_groups if any(q is param for q in g["params"]))
        hyper = opt.STATE.hyper.from_group(group, gamma=0.0)
        second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        args = (state["exp_avg"].double(), second.double(), state[recovery.KEY].double())
        return recovery.recovered(param.detach().double(), *args, int(state["step"]), hyper)
    return param.detach().double() + state["last_gamma"].double() * state["momentum_buffer"].double()


def misaligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` one element into its storage: no longer 16-byte aligned (clone() would align it)."""
    return torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view(t.shape).copy_(t)


def phase_bucket(params, grads, anchors, momenta, step, phase=ek.bucket.Phase.UPDATE_PAST, last_gammas=()):
    """A bucket as the optimizers build it, for one launch of `phase`; the anchor-free update's parameters
    are their own anchors."""
    anchor_free = phase == ek.bucket.Phase.UPDATE_PAST_ANCHOR_FREE
    return ek.bucket.Bucket(
        params=params,
        grads=grads,
        anchors=params if anchor_free else anchors,
        momenta=momenta,
        steps=[torch.tensor(float(step)) for _ in params],
        indices=list(range(len(params))),
        last_gammas=[t.clone() for t in last_gammas] if anchor_free else [],
    )


over_backends = pytest.mark.parametrize("backend", CPU_BACKENDS)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    # EXTRAP_TEST_SMALL_TABLES=1: every CUDA launch of the run (emulated or on a device) takes the 4 KB
    # kernel-argument table, as under a driver before CUDA 12.1, so the whole suite runs the fallback.
    if os.environ.get("EXTRAP_TEST_SMALL_TABLES") == "1":
        for ext in (ek._ext.load_cuda_emulation() if ek._ext.cuda_emulation_requested() else None, ek._ext.load()):
            if ext is not None and hasattr(ext, "force_small_kernel_args"):
                ext.force_small_kernel_args(True)
