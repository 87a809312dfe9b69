"""Compiles the Triton kernel ahead of time for GPU targets, on a machine without a GPU (the interpreter
never runs Triton's compiler, so a compile-only error would otherwise reach users). Run by
tests/test_triton_compile.py in a process of its own, since TRITON_INTERPRET must be off before the
kernel is defined.   python tests/triton_aot.py [--arch 80,90]

The adaptive bases' kernels (triton_adaptive.py) are compiled the same way: every phase and dtype, each
switch once, LAMB's reading pass and its per-tensor sums.

It then reads the PTX of the hot specializations (every phase with momentum, and every adaptive phase
without amsgrad, fp32 and bf16, on 16-byte aligned buckets) and fails
unless each array a phase moves is loaded and stored in 128-bit accesses in
the whole-block path: as many of them as the block's bytes per thread make (SPEC's traffic per phase).
The same phase on an unaligned bucket, which must show none, is the control."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the runtime's default, said aloud

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from traffic import adaptive_moved_arrays, moved_arrays  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from extrap_kernels.backends import triton_adaptive as ta  # noqa: E402
from extrap_kernels.backends import triton_lamb as tlamb  # noqa: E402
from extrap_kernels.backends import triton_sgd as tk  # noqa: E402

DTYPES = {
    "fp32": (tl.float32, tl.float32, False),
    "fp64": (tl.float64, tl.float64, False),
    "bf16": (tl.bfloat16, tl.float32, True),
    "fp16": (tl.float16, tl.float32, True),
}
BASE = dict(
    MOMENTUM=True,
    NESTEROV=False,
    WD_AFTER_MOMENTUM=False,
    EXTRAPOLATE_WITH_MOMENTUM=False,
    PAST_GRAD=False,
    HAS_TRUST=False,
    HAS_SCALE=False,
    UNSCALES=False,
    HAS_FOUND_INF=False,
    LR_TENSOR=False,
    GAMMA_TENSOR=False,
)


def cover() -> list[tuple[str, dict]]:
    """Every phase with every parameter dtype (the anchor-free update with fp32 and fp64), and each switch a user
    can turn on (momentum off, Nesterov,
    Apex's wd_after_momentum, extrapolation with momentum, past along g', LARS, AMP, tensor rates) once
    on the one-phase past step of fp32 and of bf16 with its fp32 master."""
    out = []
    for phase in range(4):
        for name, (x, s, master) in DTYPES.items():
            out.append((f"phase{phase}-{name}", dict(BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=s, MASTER=master)))
    for name in ("fp32", "fp64"):  # the anchor-free past update exists for full-precision parameters only
        x, s, master = DTYPES[name]
        out.append((f"phase4-{name}", dict(BASE, PHASE=4, X_DTYPE=x, S_DTYPE=s, MASTER=master)))
    out.append(
        (
            "phase4-fp32-amp-rates",
            dict(
                BASE,
                PHASE=4,
                X_DTYPE=tl.float32,
                S_DTYPE=tl.float32,
                MASTER=False,
                HAS_SCALE=True,
                UNSCALES=True,
                HAS_FOUND_INF=True,
                LR_TENSOR=True,
                GAMMA_TENSOR=True,
            ),
        )
    )
    for name, rounding in (("bf16", 1), ("fp16", 2)):  # 16-bit state without a master, every phase (4: anchor-free)
        x, _, _ = DTYPES[name]
        for phase in range(5):
            out.append(
                (
                    f"phase{phase}-{name}-no-master",
                    dict(BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=x, MASTER=False, C_DTYPE=tl.float32, ROUNDING=rounding),
                )
            )
    for phase in (1, 4):  # the compensated anchor (bf16 x over its int16 remainders in the s row): x its own anchor
        compensated = dict(BASE, PHASE=phase, X_DTYPE=tl.bfloat16, S_DTYPE=tl.int16, MASTER=False, C_DTYPE=tl.float32)
        out.append((f"phase{phase}-bf16-compensated", compensated))
    switches = [
        dict(MOMENTUM=False),
        dict(NESTEROV=True),
        dict(WD_AFTER_MOMENTUM=True),
        dict(PAST_GRAD=True),
        dict(HAS_TRUST=True),
        dict(HAS_SCALE=True, UNSCALES=True, HAS_FOUND_INF=True),
        dict(LR_TENSOR=True, GAMMA_TENSOR=True),
    ]
    for phase in range(5):  # the unaligned path (a misaligned tensor in the bucket) of every phase
        for name in ("fp32", "bf16") if phase != 4 else ("fp32",):
            x, s, master = DTYPES[name]
            out.append(
                (
                    f"phase{phase}-{name}-unaligned",
                    dict(BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=s, MASTER=master, ALIGNED=False),
                )
            )
    for name in ("fp32", "bf16"):
        x, s, master = DTYPES[name]
        for switch in switches:
            label = "+".join(k.lower() for k, v in switch.items() if v) or "no-momentum"
            out.append((f"past-{name}-{label}", dict(BASE, PHASE=2, X_DTYPE=x, S_DTYPE=s, MASTER=master, **switch)))
        out.append(
            (
                f"extrapolate-{name}-with-momentum",
                dict(BASE, PHASE=0, X_DTYPE=x, S_DTYPE=s, MASTER=master, EXTRAPOLATE_WITH_MOMENTUM=True),
            )
        )
    return out


ADAPTIVE_BASE = dict(
    MOMENTS=2,  # (triton_adaptive_math.FIRST_AND_SECOND: m and v)
    DECOUPLED=True,
    BIAS_CORRECTION=True,
    HAS_TRUST=False,
    HAS_SCALE=False,
    UNSCALES=False,
    HAS_FOUND_INF=False,
    LR_TENSOR=False,
    GAMMA_TENSOR=False,
    BETA1_TENSOR=False,
    BETA2_TENSOR=False,
    GRAD_AVERAGING=True,
)


def adaptive_cover() -> list[tuple[str, str, dict]]:
    """(kernel, label, constexprs): every adaptive phase with every parameter dtype, aligned and not; each
    switch once on the past step of fp32 and bf16; the reading pass (x or s read, amsgrad) and the sums."""
    out = []
    for phase in range(4):
        for name, (x, c, master) in DTYPES.items():
            for aligned in (True, False):
                out.append(
                    (
                        "adaptive",
                        f"adaptive{phase}-{name}{'' if aligned else '-unaligned'}",
                        dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=aligned),
                    )
                )
    switches = [
        dict(MOMENTS=3),  # amsgrad's v_max too
        dict(MOMENTS=1, BIAS_CORRECTION=False),  # Adagrad: its sum v alone
        dict(MOMENTS=4, HAS_TRUST=True),  # NovoGrad: m alone, its norms where the trust ratios go
        dict(DECOUPLED=False),
        dict(BIAS_CORRECTION=False),
        dict(HAS_TRUST=True),
        dict(HAS_SCALE=True, UNSCALES=True, HAS_FOUND_INF=True),
        dict(LR_TENSOR=True, GAMMA_TENSOR=True),
        dict(BETA1_TENSOR=True, BETA2_TENSOR=True),
        dict(BETA1_TENSOR=True, GRAD_AVERAGING=False),
    ]
    for name in ("fp32", "bf16"):
        x, c, master = DTYPES[name]
        for switch in switches:
            label = "+".join(f"{k.lower()}{v}" if k == "MOMENTS" else k.lower() for k, v in switch.items())
            out.append(
                (
                    "adaptive",
                    f"adaptive-past-{name}-{label}",
                    dict(ADAPTIVE_BASE, PHASE=2, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True, **switch),
                )
            )
    for name in ("fp32", "fp64"):  # Adam's and AdamW's anchor-free past update (full-precision x alone)
        x, c, master = DTYPES[name]
        for label, switch in (("", {}), ("-amsgrad", dict(MOMENTS=3)), ("-adam", dict(DECOUPLED=False))):
            for more in ({}, dict(LR_TENSOR=True, GAMMA_TENSOR=True, HAS_FOUND_INF=True)):
                extra = "-capturable" if more else ""
                constexprs = dict(ADAPTIVE_BASE, PHASE=4, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True)
                out.append(("adaptive", f"adaptive4-{name}{label}{extra}", dict(constexprs, **switch, **more)))
    for name, rounding in (("bf16", 1), ("fp16", 2)):  # a 16-bit x and anchor without a master, every phase
        x, c, _ = DTYPES[name]
        for phase in range(5):
            out.append(
                (
                    "adaptive",
                    f"adaptive{phase}-{name}-no-master",
                    dict(
                        ADAPTIVE_BASE,
                        PHASE=phase,
                        X_DTYPE=x,
                        S_DTYPE=x,
                        C_DTYPE=c,
                        ROUNDING=rounding,
                        MASTER=False,
                        ALIGNED=True,
                    ),
                )
            )
    for phase, moments in ((1, tl.float32), (4, tl.float32), (4, tl.bfloat16)):  # the compensated anchor
        x, c, _ = DTYPES["bf16"]
        compensated = dict(S_DTYPE=tl.int16, MASTER=False, M_DTYPE=moments, MOMENT_ROUNDING=int(moments == tl.bfloat16))
        constexprs = dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, ALIGNED=True, **compensated)
        out.append(("adaptive", f"adaptive{phase}-bf16-compensated-{str(moments)}", constexprs))
    for phase in (0, 4):  # LAMB's reading pass over a compensated x (before the update, and the anchor-free one)
        x, c, _ = DTYPES["bf16"]
        out.append(("norms", f"norms-bf16-compensated{phase}", _norms_constexprs(x, tl.int16, c, False, False, phase)))
    for phase in range(5):  # 16-bit moments (exp_avg_dtype) on fp32 x, and on a bf16 x without a master
        for moments, rounding in ((tl.bfloat16, 1), (tl.float16, 2)):
            mname = "bf16" if rounding == 1 else "fp16"
            sixteen = dict(M_DTYPE=moments, MOMENT_ROUNDING=rounding if phase else 0)
            x, c, master = DTYPES["fp32"]
            out.append(
                (
                    "adaptive",
                    f"adaptive{phase}-fp32-{mname}-moments",
                    dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True, **sixteen),
                )
            )
            if phase == 2:
                out.append(
                    (
                        "adaptive",
                        f"adaptive2-fp32-{mname}-moments-amsgrad",
                        dict(ADAPTIVE_BASE, PHASE=2, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True, MOMENTS=3)
                        | sixteen,
                    )
                )
            x, c, _ = DTYPES["bf16"]  # (phase 4, the anchor-free update, recovers s from the bf16 x)
            no_master = dict(S_DTYPE=x, ROUNDING=1, MASTER=False)
            out.append(
                (
                    "adaptive",
                    f"adaptive{phase}-bf16-no-master-{mname}-moments",
                    dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, ALIGNED=True, **no_master, **sixteen),
                )
            )
    for name, (x, c, _) in DTYPES.items():
        for reads_x in (False, True) if x == c else (False,):
            for amsgrad in (False, True):
                label = f"norms-{name}{'-x' if reads_x else ''}{'-amsgrad' if amsgrad else ''}"
                out.append(("norms", label, _norms_constexprs(x, c, c, reads_x, amsgrad)))
        for amsgrad in (False, True) if x == c else ():  # before the anchor-free update: s recovered from x
            label = f"norms-{name}-recovered{'-amsgrad' if amsgrad else ''}"
            out.append(("norms", label, _norms_constexprs(x, c, c, False, amsgrad, 4)))
        out.append(("sums", f"sums-{name}", dict(C_DTYPE=c)))
    for name in ("bf16", "fp16"):  # the reading pass over a 16-bit anchor (s, or x itself) without a master
        x, c, _ = DTYPES[name]
        for reads_x in (False, True):
            label = f"norms-{name}-no-master{'-x' if reads_x else ''}"
            out.append(("norms", label, _norms_constexprs(x, x, c, reads_x, False)))
        out.append(("norms", f"norms-{name}-no-master-recovered", _norms_constexprs(x, x, c, False, False, 4)))
    for rounding in (0, 1, 2):  # over 16-bit moments: rounded as the coming update rounds them, or not (look-ahead)
        x, c, _ = DTYPES["fp32"]
        moments = tl.float16 if rounding == 2 else tl.bfloat16
        for amsgrad, phase in ((False, 0), (True, 0), (False, 4)):
            label = f"norms-fp32-moments{rounding}{'-amsgrad' if amsgrad else ''}{'-recovered' if phase else ''}"
            constexprs = _norms_constexprs(x, c, c, False, amsgrad, phase)
            out.append(("norms", label, dict(constexprs, M_DTYPE=moments, MOMENT_ROUNDING=rounding)))
    return out


def _norms_constexprs(x, s, c, reads_x: bool, amsgrad: bool, phase: int = 0) -> dict:
    """LAMB's reading pass over x of dtype x, its anchor of s, computing in c (amsgrad: with capturable betas;
    `phase`: the anchor-free update's, which recovers s, or 0)."""
    return dict(
        X_DTYPE=x,
        S_DTYPE=s,
        C_DTYPE=c,
        READS_X=reads_x,
        PHASE=phase,
        AMSGRAD=amsgrad,
        DECOUPLED=True,
        BIAS_CORRECTION=True,
        HAS_SCALE=True,
        BETA1_TENSOR=amsgrad,
        BETA2_TENSOR=amsgrad,
        GRAD_AVERAGING=True,
    )


def compile_adaptive(kernel: str, constexprs: dict, arch: int):
    """triton_adaptive's kernels: `kernel` "adaptive" (a phase), "norms" (LAMB's reading pass) or "sums". The
    anchor is of the state dtype and rounded to nearest unless the constexprs say otherwise (S_DTYPE, ROUNDING)."""
    state = {tl.float32: "fp32", tl.float64: "fp64"}[constexprs["C_DTYPE"]]
    if kernel != "sums":
        defaults = {"S_DTYPE": constexprs["C_DTYPE"], "M_DTYPE": constexprs["C_DTYPE"], "MOMENT_ROUNDING": 0}
        constexprs = dict(defaults, **constexprs)
    scalars = [
        "weight_decay",
        "sign",
        "beta1",
        "one_minus_beta2",
        "beta2",
        "grad_gain",
        "eps",
        "log_beta1",
        "log_beta2",
    ]
    if kernel == "sums":
        fn, sig, constexprs = (
            tlamb._segment_sums_kernel,
            {"block_sums": f"*{state}", "first_block": "*i64", "sums": f"*{state}"},
            dict(SEGMENT=tlamb.SEGMENT),
        )
    elif kernel == "norms":
        fn = tlamb._norms_kernel
        sig = {
            "table": "*i64",
            "numels": "*i64",
            "indices": "*i64",
            "block_tensor": "*i32",
            "block_start": "*i64",
            "scale_ptr": f"*{state}",
            "block_sums": f"*{state}",
            **{k: "fp32" for k in scalars},
            "seed": "u64",
        }
        constexprs = dict(constexprs, BLOCK=2048)
    else:
        fn = ta._adaptive_kernel
        constexprs = dict({"ROUNDING": 0}, **constexprs)
        sig = {
            "table": "*i64",
            "numels": "*i64",
            "indices": "*i64",
            "block_tensor": "*i32",
            "block_start": "*i64",
            "trust_ptr": f"*{state}",
            "scale_ptr": f"*{state}",
            "found_inf_ptr": "*fp32",
            "lr": "fp32",
            "gamma": "fp32",
            "lr_ptr": f"*{state}",
            "gamma_ptr": f"*{state}",
            "loss_scale_ptr": f"*{state}",
            "weight_decay": "fp32",
            "sign": "fp32",
            "noise_std": "fp32",
            "seed": "u64",
            **{k: "fp32" for k in scalars if k not in ("weight_decay", "sign")},
            "lr_decay": "fp32",
        }
        constexprs = dict(constexprs, BLOCK=2048)
    for beta in ("beta1", "beta2") if kernel != "sums" else ():  # (a capturable beta: its float64 tensor instead)
        if constexprs.get(f"{beta.upper()}_TENSOR"):
            sig[beta] = "*fp64"
    sig.update({k: "constexpr" for k in constexprs})
    compiled = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32)
    )
    assert compiled.asm["cubin"], "no cubin"
    return compiled


def signature(state: tl.dtype) -> dict[str, str]:
    """The runtime argument types of _phase_kernel (triton_sgd.apply_sgd), constexprs apart."""
    s = {tl.float32: "fp32", tl.float64: "fp64"}[state]
    return {
        "table": "*i64",
        "numels": "*i64",
        "indices": "*i64",
        "block_tensor": "*i32",
        "block_start": "*i64",
        "trust_ptr": f"*{s}",
        "scale_ptr": "*fp32",
        "found_inf_ptr": "*fp32",
        "lr": "fp32",
        "gamma": "fp32",
        "lr_ptr": f"*{s}",
        "gamma_ptr": f"*{s}",
        "loss_scale_ptr": "*fp32",
        "momentum": "fp32",
        "dampening": "fp32",
        "weight_decay": "fp32",
        "sign": "fp32",
        "noise_std": "fp32",
        "seed": "u64",
    }


def compile_kernel(constexprs: dict, arch: int):
    # (the arithmetic is in the state dtype, rounded to nearest, on an aligned bucket, unless said otherwise)
    constexprs = dict({"C_DTYPE": constexprs["S_DTYPE"], "ROUNDING": 0, "ALIGNED": True}, **constexprs, BLOCK=2048)
    sig = signature(constexprs["C_DTYPE"])
    sig.update({k: "constexpr" for k in constexprs})
    kernel = triton.compile(
        ASTSource(fn=tk._phase_kernel, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32)
    )
    assert kernel.asm["cubin"], "no cubin"
    return kernel


VECTOR = r"{op}\.global(?:\.[\w:]+)*?\.(?:v4\.b32|v2\.b64)\b"


def vector_accesses(ptx: str) -> tuple[int, int]:
    """The 128-bit global loads and stores in a kernel's PTX."""
    return len(re.findall(VECTOR.format(op="ld"), ptx)), len(re.findall(VECTOR.format(op="st"), ptx))


def check_vectors(label: str, kernel, size: dict[str, int], moved: tuple[list, list], exact: bool = False) -> list[str]:
    """One hot kernel's 128-bit accesses in its PTX against what its whole block needs: every array it reads
    and writes (`moved`, SPEC's traffic), `size[a]` bytes per element, in 16-byte accesses (`exact`: no more
    either, for a kernel that must not move an array its family's others do). Returns the failure, if any."""
    per_thread = 2048 // (32 * kernel.metadata.num_warps)  # elements of a whole block per thread
    reads, writes = moved
    want = (sum(per_thread * size[a] // 16 for a in reads), sum(per_thread * size[a] // 16 for a in writes))
    got = vector_accesses(kernel.asm["ptx"])
    print(
        f"PTX {label}: 128-bit loads {got[0]} (want >= {want[0]}: {reads}), "
        f"stores {got[1]} (want >= {want[1]}: {writes})"
    )
    if got[0] < want[0] or got[1] < want[1] or (exact and got != want):
        return [f"PTX {label}: {got} 128-bit loads/stores, want {want}{' exactly' if exact else ''}"]
    return []


def check_ptx(arch: int) -> list[str]:
    """The hot specializations' 128-bit accesses (see the module's docstring); returns the failures."""
    failures = []
    hot = [(phase, name) for phase in range(5) for name in ("fp32", "bf16") if phase != 4 or name == "fp32"]
    for phase, name in hot:
        x, s, master = DTYPES[name]
        constexprs = dict(BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=s, MASTER=master)
        size = dict.fromkeys("xg", x.primitive_bitwidth // 8) | dict.fromkeys("sm", s.primitive_bitwidth // 8)
        failures += check_vectors(
            f"sm_{arch} phase{phase}-{name}", compile_kernel(constexprs, arch), size, moved_arrays(phase, master)
        )
        if (phase, name) == (2, "fp32"):  # the control: unaligned, the same phase has no vector access
            unaligned = vector_accesses(compile_kernel(dict(constexprs, ALIGNED=False), arch).asm["ptx"])
            print(f"PTX sm_{arch} phase2-fp32-unaligned (control): 128-bit loads/stores {unaligned}")
            if unaligned != (0, 0):
                failures.append(
                    f"PTX control: the unaligned kernel has 128-bit accesses {unaligned}: the check "
                    "cannot tell the paths apart"
                )
    for name in ("fp32", "bf16"):  # an AMP step writes its gradients back unscaled: 16-byte stores of g too
        x, s, master = DTYPES[name]
        reads, writes = moved_arrays(2, master)
        amp = dict(BASE, PHASE=2, X_DTYPE=x, S_DTYPE=s, MASTER=master, HAS_SCALE=True, UNSCALES=True)
        size = dict.fromkeys("xg", x.primitive_bitwidth // 8) | dict.fromkeys("sm", s.primitive_bitwidth // 8)
        failures += check_vectors(
            f"sm_{arch} phase2-{name}-amp", compile_kernel(amp, arch), size, (reads, writes + "g")
        )
    for phase in range(5):  # the adaptive phases without amsgrad (the anchor-free past update: fp32 alone)
        for name in ("fp32", "bf16") if phase < 4 else ("fp32",):
            x, c, master = DTYPES[name]
            kernel = compile_adaptive(
                "adaptive", dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True), arch
            )
            size = dict.fromkeys("xg", x.primitive_bitwidth // 8) | dict.fromkeys("smv", c.primitive_bitwidth // 8)
            failures += check_vectors(
                f"sm_{arch} adaptive{phase}-{name}", kernel, size, adaptive_moved_arrays(phase, master)
            )
            if (phase, name) == (2, "fp32"):  # the adaptive kernel's control, as the SGD family's
                unaligned = vector_accesses(
                    compile_adaptive(
                        "adaptive",
                        dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=False),
                        arch,
                    ).asm["ptx"]
                )
                print(f"PTX sm_{arch} adaptive2-fp32-unaligned (control): 128-bit loads/stores {unaligned}")
                if unaligned != (0, 0):
                    failures.append(f"PTX adaptive control: the unaligned kernel has 128-bit accesses {unaligned}")
    for phase in range(5):  # bf16 without a master (FusedAdam's default): x and s 16-bit, the moments fp32
        x, c, _ = DTYPES["bf16"]
        kernel = compile_adaptive(
            "adaptive",
            dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=x, C_DTYPE=c, ROUNDING=1, MASTER=False, ALIGNED=True),
            arch,
        )
        size = dict.fromkeys("xgs", 2) | dict.fromkeys("mv", 4)
        failures += check_vectors(
            f"sm_{arch} adaptive{phase}-bf16-no-master", kernel, size, adaptive_moved_arrays(phase, False)
        )
    for phase in (1, 4):  # the compensated anchor: x and its remainders (the s row) 16-bit, the moments fp32
        x, c, _ = DTYPES["bf16"]
        constexprs = dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, S_DTYPE=tl.int16, C_DTYPE=c, MASTER=False)
        kernel = compile_adaptive("adaptive", dict(constexprs, ALIGNED=True), arch)
        size = dict.fromkeys("xgs", 2) | dict.fromkeys("mv", 4)  # (x joined with its remainder, and both stored)
        failures += check_vectors(f"sm_{arch} adaptive{phase}-bf16-compensated", kernel, size, ("xsgmv", "xsmv"))
    for phase in (1, 2, 4):  # 16-bit moments on fp32 x (the update phases: they round and store them)
        x, c, master = DTYPES["fp32"]
        sixteen = dict(M_DTYPE=tl.bfloat16, MOMENT_ROUNDING=1)
        constexprs = dict(ADAPTIVE_BASE, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True, **sixteen)
        kernel = compile_adaptive("adaptive", constexprs, arch)
        size = dict.fromkeys("xgs", 4) | dict.fromkeys("mv", 2)
        failures += check_vectors(
            f"sm_{arch} moments16-adaptive{phase}-fp32", kernel, size, adaptive_moved_arrays(phase, master)
        )
    for phase in range(4):  # Adagrad (its sum alone): exactly the arrays it moves, no first moment
        x, c, master = DTYPES["fp32"]
        adagrad = dict(ADAPTIVE_BASE, MOMENTS=1, BIAS_CORRECTION=False, DECOUPLED=False)
        kernel = compile_adaptive(
            "adaptive", dict(adagrad, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True), arch
        )
        moved = adaptive_moved_arrays(phase, master, moments=1)
        failures += check_vectors(f"sm_{arch} adagrad{phase}-fp32", kernel, dict.fromkeys("xgsv", 4), moved, exact=True)
    for phase in range(4):  # NovoGrad (m alone; its norms one per tensor): exactly the arrays it moves
        x, c, master = DTYPES["fp32"]
        novograd = dict(ADAPTIVE_BASE, MOMENTS=4, HAS_TRUST=True)
        kernel = compile_adaptive(
            "adaptive", dict(novograd, PHASE=phase, X_DTYPE=x, C_DTYPE=c, MASTER=master, ALIGNED=True), arch
        )
        moved = adaptive_moved_arrays(phase, master, moments=4)
        size = dict.fromkeys("xgsm", 4)
        failures += check_vectors(f"sm_{arch} novograd{phase}-fp32", kernel, size, moved, exact=True)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="80,90")
    parser.add_argument(
        "--cover",
        choices=("all", "hot"),
        default="all",
        help="hot: only the PTX check's kernels (the other Triton versions' quick check)",
    )
    args = parser.parse_args(argv)
    print(f"triton {triton.__version__} ({os.path.dirname(triton.__file__)})")
    failures, compiled, start = [], 0, time.monotonic()
    archs = [int(a) for a in args.arch.split(",")]
    jobs = [("phase", label, constexprs) for label, constexprs in cover()] + adaptive_cover()
    if args.cover == "hot":
        jobs = []
    for arch in archs:
        for kernel, label, constexprs in jobs:
            try:
                if kernel == "phase":
                    compile_kernel(constexprs, arch)
                else:
                    compile_adaptive(kernel, constexprs, arch)
                compiled += 1
            except Exception as err:  # report every failing specialization, not just the first
                failures.append(f"sm_{arch} {label}: {type(err).__name__}: {str(err)[:300]}")
    total = len(archs) * len(jobs)
    if jobs:
        print(f"compiled {compiled} of {total} specializations for sm_{args.arch} in {time.monotonic() - start:.0f} s")
    for arch in archs:
        failures += check_ptx(arch)
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
