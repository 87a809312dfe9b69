"""What nvcc makes of the CUDA kernels, checked without a GPU (`make cuda-check` runs it; so does CI):
csrc/cuda/extrap_cuda.cu is compiled to a cubin for each target with ptxas's resource report, and its SASS
(cuobjdump, shipped in the triton wheel) is read.
- No kernel instantiation spills to local memory (ptxas: 0 bytes spill stores and loads), but for the
  known ones in KNOWN_SPILLS, each bounded. (A noise kernel's stack frame is cosf's argument-reduction
  array, which only arguments beyond 105615 use; the noise's argument is below 2 pi.)
- The hot kernels (every phase with momentum, fp32 and bf16 parameters with fp32 state, and every adaptive
  phase without amsgrad for the same dtypes, each with the large table and with the 4 KB one) load and store
  in 128-bit accesses (LDG.E.128 / STG.E.128) at least as often as one vector iteration moves 16-byte
  pieces of the arrays the phase reads and writes (SPEC's traffic). Their scalar tail loop must show
  32-bit accesses too: the parser sees both kinds, so a kernel that lost its vector loop fails.

    python tests/cuda_sass.py [--arch 80,90] [--nvcc PATH] [--out build/sass]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from traffic import adaptive_moved_arrays, moved_arrays

ROOT = Path(__file__).resolve().parents[1]
# (the last template argument is the launch's table: the 26 KB one, or the 4 KB fallback)
TABLE = r", extrap::TensorTable<(\d+), (\d+)> ?>"
KERNEL = re.compile(r"phase_kernel<\(extrap::Phase\)(\d), (true|false), ([\w:]+), ([\w:]+), (\w+)" + TABLE)
# (the adaptive kernel's moments, csrc/extrap_math.h's Moments: 1 Adagrad's sum alone, 2 m and v, 3 with amsgrad's
# v_max, 4 NovoGrad's m alone; and types: the parameter's, the anchor's (the state dtype, or the parameter's own
# without a master), the moments' (the arithmetic's, or 16-bit: exp_avg_dtype) and the arithmetic's)
ADAPTIVE = re.compile(r"adaptive_kernel<\(extrap::Phase\)(\d), (\d), ([\w:]+), ([\w:]+), ([\w:]+), (\w+)" + TABLE)
WITH_MAX = 3
# SGD family: 5 phases x fp32/bf16, less bf16's phase 4; adaptive: 4 phases x fp32/bf16 with m and v (Adam,
# LAMB) and fp32's anchor-free phase 4 (Adam's), v alone (Adagrad) and m alone (NovoGrad); the compensated anchor
# (a bf16 x over its int16 remainders, "short" in the anchor's place) in phases 1 and 4 of the SGD family with
# momentum and of Adam with fp32 m and v; each with either table
HOT = 2 * (9 + 9 + 8 + 8 + 4)
SIZES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "short": 2}
# (arch, phase, momentum, parameter dtype, state dtype) -> the most bytes it may spill. Measured with nvcc 12/13:
# on sm_80 the noise phase of 16-bit parameters without momentum stores one register to local memory at
# entry (STL before the loop) and reloads it; no hot kernel (tests below) is among them.
# On sm_90 the adaptive noise phase of fp64 parameters (a kernel read as ("adaptive", moments)) spills a few
# bytes the same way; it is not a hot kernel either.
# On sm_80 the adaptive phases of 16-bit parameters without a master (the stochastic rounding's Philox beside the
# moments) store one register at entry and reload it, 4 B stored and 8 B loaded; they are not hot kernels yet.
# So do Adagrad's (moments 1) for fp16 without a master, with nvcc 13.0, and NovoGrad's (moments 4) for some
# 16-bit phases without a master.
# On sm_90 (nvcc 13.0) the amsgrad noise phase of bf16 parameters with a master stores 2 B and reloads 4 B the
# same way, and so does NovoGrad's noise phase of bf16 parameters without a master; neither is hot.
KNOWN_SPILLS = {
    (80, 3, "false", "c10::BFloat16", "float"): 4,
    (80, 3, "false", "c10::Half", "float"): 4,
    (90, 3, ("adaptive", 2), "double", "double"): 16,
    (90, 3, ("adaptive", 3), "c10::BFloat16", "float"): 4,
    (90, 3, ("adaptive", 4), "c10::BFloat16", "c10::BFloat16"): 4,
    (90, 1, ("adaptive", 2), "c10::Half", "c10::Half"): 8,  # (fp16 without a master, nvcc 13.0, since the
    # 16-bit moments' template parameter: one register at entry, as sm_80's below)
    **{
        (80, phase, ("adaptive", moments), x, x): 8
        for phase in range(4)
        for moments in (1, 2, 3, 4)
        for x in ("c10::BFloat16", "c10::Half")
    },
}


def tools(nvcc: str | None) -> tuple[str, str, str]:
    nvcc = nvcc or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        cuobjdump = Path(shutil.which("cuobjdump") or "cuobjdump")
    cxxfilt = shutil.which("c++filt") or "c++filt"
    return nvcc, str(cuobjdump), cxxfilt


def demangle(cxxfilt: str, names: list[str]) -> dict[str, str]:
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def compile_cubin(nvcc: str, arch: int, out: Path) -> tuple[Path, str]:
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"], str(ROOT / "csrc")]]
    cubin = out / f"extrap_cuda.sm_{arch}.cubin"
    result = subprocess.run(
        [
            nvcc,
            "-cubin",
            "-std=c++17",
            "-O3",
            "-DEXTRAP_WITH_CUDA",
            *includes,
            "-diag-suppress",
            "3306",
            f"-arch=sm_{arch}",
            "-Xptxas",
            "-v",
            str(ROOT / "csrc/cuda/extrap_cuda.cu"),
            "-o",
            str(cubin),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"nvcc failed for sm_{arch}:\n{result.stderr[-4000:]}")
    return cubin, result.stdout + result.stderr


def spills(ptxas_log: str) -> dict[str, tuple[int, int, int]]:
    """mangled kernel -> (stack frame, spill stores, spill loads) bytes, from ptxas -v."""
    found = {}
    for name, frame, stores, loads in re.findall(
        r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        ptxas_log,
    ):
        found[name] = (int(frame), int(stores), int(loads))
    return found


def sass_accesses(cuobjdump: str, cubin: Path) -> dict[str, dict[str, int]]:
    """mangled kernel -> counts of its global loads and stores by kind (LDG.E.128, STG.E, ...)."""
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    counts: dict[str, dict[str, int]] = {}
    current = None
    for line in sass.splitlines():
        function = re.search(r"Function : (\S+)", line)
        if function:
            current = counts.setdefault(function[1], defaultdict(int))
            continue
        access = re.search(r"\b((?:LDG|STG)(?:\.[A-Z0-9_]+)*)\b", line)
        if access and current is not None:
            current[access[1]] += 1
    return counts


def check(arch: int, compiled: tuple[Path, str], cuobjdump: str, cxxfilt: str, out: Path) -> tuple[list[str], int]:
    cubin, log = compiled
    (out / f"ptxas.sm_{arch}.log").write_text(log)
    resources = spills(log)
    accesses = sass_accesses(cuobjdump, cubin)
    names = demangle(cxxfilt, sorted(set(resources) | set(accesses)))
    failures = []
    # (ptxas also reports the device subroutines kernels call, as __internal_accurate_pow for the adaptive
    # bias corrections: their spills are checked, but only kernels have SASS of their own)
    kernels = {name for name in resources if name.startswith("_Z")}
    if not kernels or kernels != set(accesses):
        failures.append(f"sm_{arch}: ptxas reported {len(kernels)} kernels, the SASS holds {len(accesses)}")
    for mangled, (frame, stores, loads) in sorted(resources.items()):
        kernel, adaptive = KERNEL.search(names[mangled]), ADAPTIVE.search(names[mangled])
        key = None
        if kernel:
            key = (arch, int(kernel[1]), kernel[2], kernel[3], kernel[4])
        elif adaptive:
            key = (arch, int(adaptive[1]), ("adaptive", int(adaptive[2])), adaptive[3], adaptive[4])
        allowed = KNOWN_SPILLS.get(key, 0)
        # 16-bit moments (exp_avg_dtype; not hot kernels yet): the moments' Philox beside the parameter's keeps a
        # few registers at entry (measured with nvcc 13.0: up to 32 B stored, 80 B loaded, fp16 amsgrad without a
        # master on sm_90; LAMB's amsgrad reading pass 8 B and 32 B on sm_80)
        if re.search(r"adaptive(_norms)?_kernel<.*c10::(BFloat16|Half), float, extrap::TensorTable", names[mangled]):
            allowed = max(allowed, 96)
        # LAMB's amsgrad reading pass recovering s from x (kFrom 2) spills the same 8 B and 32 B on sm_80 over fp32
        # moments too where x is 16-bit without a master (measured with nvcc 13.0); not a hot kernel
        recovering = r"adaptive_norms_kernel<true, 2, 0, c10::(BFloat16|Half), c10::(BFloat16|Half), float,"
        if re.search(recovering, names[mangled]):
            allowed = max(allowed, 32)
        if stores > allowed or loads > allowed:
            failures.append(
                f"sm_{arch} {names[mangled]}: spills ({stores} B stored, {loads} B loaded; {allowed} B known)"
            )
        elif stores or loads:
            print(f"sm_{arch} {names[mangled]}: known spill, {stores} B stored, {loads} B loaded")
    hot = 0
    for mangled, counts in sorted(accesses.items()):
        kernel, adaptive = KERNEL.search(names[mangled]), ADAPTIVE.search(names[mangled])
        if kernel:
            phase, momentum, scalar, state = int(kernel[1]), kernel[2] == "true", kernel[3], kernel[4]
            master = scalar != state
            if state == "short" and momentum:  # (the compensated anchor: its m is fp32)
                reads, writes, kind, state = *moved_arrays(phase, master, compensated=True), "compensated ", "float"
            elif not momentum or scalar not in ("float", "c10::BFloat16") or state != "float":
                continue
            elif phase == 4 and master:
                continue
            else:
                reads, writes, kind = *moved_arrays(phase, master), ""
        elif adaptive:
            phase, moments, scalar, state = int(adaptive[1]), int(adaptive[2]), adaptive[3], adaptive[4]
            master = scalar != state
            hot_types = scalar in ("float", "c10::BFloat16") and state == "float" and adaptive[5] == "float"
            hot_types = hot_types and adaptive[6] == "float"  # (16-bit moments: 8-byte accesses on fp32 x, not hot)
            compensated = state == "short" and moments == 2 and adaptive[5] == "float"
            if compensated:  # (phases 1 and 4 of a bf16 x over its remainders, fp32 m and v)
                reads, writes = adaptive_moved_arrays(phase, master, moments, compensated=True)
                kind, state = "compensated adaptive ", "float"
            elif moments == WITH_MAX or not hot_types or (phase == 4 and (master or moments != 2)):
                continue  # (phase 4: Adam's anchor-free update, which full-precision parameters alone run)
            else:
                reads, writes = adaptive_moved_arrays(phase, master, moments)
                kind = {1: "adagrad ", 2: "adaptive ", 4: "novograd "}[moments]
        else:
            continue
        vector = 4 if SIZES[scalar] >= 4 else 16 // SIZES[scalar]  # extrap_cuda.cu's kVectorWidth
        size = {"x": SIZES[scalar], "g": SIZES[scalar], "s": SIZES[state], "m": SIZES[state], "v": SIZES[state]}
        size["r"] = SIZES["short"]  # (the compensated anchor's remainders)
        want = (sum(vector * size[a] // 16 for a in reads), sum(vector * size[a] // 16 for a in writes))
        got = (counts.get("LDG.E.128", 0), counts.get("STG.E.128", 0))
        scalar_path = counts.get("LDG.E", 0) + counts.get("LDG.E.U16", 0) > 0
        hot += 1
        match = kernel or adaptive
        table = f"table of {match[match.re.groups - 1]} tensors"
        print(
            f"SASS sm_{arch} {kind}phase{phase} {scalar}/{state} {table}: "
            f"LDG.E.128 {got[0]} (want >= {want[0]}: {reads}), "
            f"STG.E.128 {got[1]} (want >= {want[1]}: {writes}); scalar tail {'yes' if scalar_path else 'NO'}; "
            f"stack {resources[mangled][0]} B, spills {resources[mangled][1]} B"
        )
        if got[0] < want[0] or got[1] < want[1] or not scalar_path or resources[mangled][1:] != (0, 0):
            failures.append(
                f"sm_{arch} {names[mangled]}: 128-bit loads/stores {got}, want {want}, spills "
                f"{resources[mangled][1:]}{'' if scalar_path else '; no scalar tail accesses found'}"
            )
    if hot != HOT:
        failures.append(f"sm_{arch}: found {hot} hot kernels, want {HOT}")
    print(f"sm_{arch}: {len(resources)} kernels' spills checked, {hot} hot kernels' SASS read")
    return failures, len(resources)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="80,90")
    parser.add_argument("--nvcc", default=os.environ.get("NVCC"))
    parser.add_argument("--out", default=str(ROOT / "build" / "sass"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nvcc, cuobjdump, cxxfilt = tools(args.nvcc)
    failures = []
    archs = [int(a) for a in args.arch.split(",")]
    with ThreadPoolExecutor(len(archs)) as pool:  # (one nvcc per arch at once: each is one process)
        compiled = list(pool.map(lambda arch: compile_cubin(nvcc, arch, out), archs))
    for arch, cubin in zip(archs, compiled):
        failures += check(arch, cubin, cuobjdump, cxxfilt, out)[0]
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
