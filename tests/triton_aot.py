"""Compiles the Triton kernel ahead of time for GPU targets, on a machine without a GPU (the interpreter
never runs Triton's compiler, so a compile-only error would otherwise reach users). Run by
tests/test_triton_compile.py in a process of its own, since TRITON_INTERPRET must be off before the
kernel is defined.   python tests/triton_aot.py [--arch 80,90]"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the runtime's default, said aloud

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from extrap_kernels.backends import triton_kernels as tk  # noqa: E402

DTYPES = {"fp32": (tl.float32, tl.float32, False), "fp64": (tl.float64, tl.float64, False),
          "bf16": (tl.bfloat16, tl.float32, True), "fp16": (tl.float16, tl.float32, True)}
BASE = dict(MOMENTUM=True, NESTEROV=False, WD_AFTER_MOMENTUM=False, EXTRAPOLATE_WITH_MOMENTUM=False,
            PAST_GRAD=False, HAS_TRUST=False, HAS_SCALE=False, HAS_FOUND_INF=False, LR_TENSOR=False,
            GAMMA_TENSOR=False)


def cover() -> list[tuple[str, dict]]:
    """Every phase with every parameter dtype (the anchor-free update with fp32 and fp64), and each switch a user can turn on (momentum off, Nesterov,
    Apex's wd_after_momentum, extrapolation with momentum, past along g', LARS, AMP, tensor rates) once
    on the one-phase past step of fp32 and of bf16 with its fp32 master."""
    out = []
    for phase in range(4):
        for name, (x, s, master) in DTYPES.items():
            out.append((f"phase{phase}-{name}", dict(BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=s, MASTER=master)))
    for name in ("fp32", "fp64"):  # the anchor-free past update exists for full-precision parameters only
        x, s, master = DTYPES[name]
        out.append((f"phase4-{name}", dict(BASE, PHASE=4, X_DTYPE=x, S_DTYPE=s, MASTER=master)))
    out.append(("phase4-fp32-amp-rates", dict(BASE, PHASE=4, X_DTYPE=tl.float32, S_DTYPE=tl.float32, MASTER=False,
                                              HAS_SCALE=True, HAS_FOUND_INF=True, LR_TENSOR=True, GAMMA_TENSOR=True)))
    for name, rounding in (("bf16", 1), ("fp16", 2)):  # 16-bit state without a master, every phase
        x, _, _ = DTYPES[name]
        for phase in range(4):
            out.append((f"phase{phase}-{name}-no-master", dict(BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=x, MASTER=False,
                                                              C_DTYPE=tl.float32, ROUNDING=rounding)))
    switches = [dict(MOMENTUM=False), dict(NESTEROV=True), dict(WD_AFTER_MOMENTUM=True), dict(PAST_GRAD=True),
                dict(HAS_TRUST=True), dict(HAS_SCALE=True, HAS_FOUND_INF=True), dict(LR_TENSOR=True, GAMMA_TENSOR=True)]
    for name in ("fp32", "bf16"):
        x, s, master = DTYPES[name]
        for switch in switches:
            label = "+".join(k.lower() for k, v in switch.items() if v) or "no-momentum"
            out.append((f"past-{name}-{label}", dict(BASE, PHASE=2, X_DTYPE=x, S_DTYPE=s, MASTER=master, **switch)))
        out.append((f"extrapolate-{name}-with-momentum", dict(BASE, PHASE=0, X_DTYPE=x, S_DTYPE=s, MASTER=master,
                                                                 EXTRAPOLATE_WITH_MOMENTUM=True)))
    return out


def signature(state: tl.dtype) -> dict[str, str]:
    """The runtime argument types of _phase_kernel (triton_kernels.apply), constexprs apart."""
    s = {tl.float32: "fp32", tl.float64: "fp64"}[state]
    return {"table": "*i64", "numels": "*i64", "indices": "*i64", "block_tensor": "*i32", "block_start": "*i64",
            "trust_ptr": f"*{s}", "scale_ptr": "*fp32", "found_inf_ptr": "*fp32", "lr": "fp32", "gamma": "fp32",
            "lr_ptr": f"*{s}", "gamma_ptr": f"*{s}", "momentum": "fp32", "dampening": "fp32",
            "weight_decay": "fp32", "sign": "fp32", "noise_std": "fp32", "seed": "u64", "rounding_seed": "u64"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="80,90")
    args = parser.parse_args(argv)
    failures, compiled, start = [], 0, time.monotonic()
    archs = [int(a) for a in args.arch.split(",")]
    for arch in archs:
        for label, constexprs in cover():
            # (the arithmetic is in the state dtype, rounded to nearest, unless an entry says otherwise)
            constexprs = dict({"C_DTYPE": constexprs["S_DTYPE"], "ROUNDING": 0}, **constexprs, BLOCK=2048)
            sig = signature(constexprs["C_DTYPE"])
            sig.update({k: "constexpr" for k in constexprs})
            try:
                kernel = triton.compile(ASTSource(fn=tk._phase_kernel, signature=sig, constexprs=constexprs),
                                        target=GPUTarget("cuda", arch, 32))
                assert kernel.asm["cubin"], "no cubin"
                compiled += 1
            except Exception as err:  # report every failing specialization, not just the first
                failures.append(f"sm_{arch} {label}: {type(err).__name__}: {str(err)[:300]}")
    print(f"compiled {compiled} of {len(archs) * len(cover())} specializations for sm_{args.arch} "
          f"in {time.monotonic() - start:.0f} s")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
