"""What each phase moves, for the checks that read compiled kernels (triton_aot.py's PTX check, cuda_sass.py's
SASS check): SPEC's traffic, as csrc/extrap_math.h's reads_param, stores_anchor and stores_momentum say (and, for the
adaptive bases, csrc/cuda/extrap_cuda.cu's adaptive_kernel)."""

from __future__ import annotations


def moved_arrays(phase: int, master: bool, compensated: bool = False) -> tuple[str, str]:
    """The arrays (x, g, s, m) a phase with momentum reads and writes; `master`: s is a 16-bit x's fp32
    master. The extrapolation reads m only to extrapolate along it, so not here. `compensated`: x is its own anchor
    over its remainders r (phases 1 and 4 alone), read and written with it."""
    if compensated:
        return "xrgm", "xrm"
    if phase == 0:
        return "gs" if master else "gx", "x" if master else "xs"
    if phase == 4:
        return "xgm", "mx"
    return "sgm", "mxs" if phase != 1 or master else "mx"


def adaptive_moved_arrays(phase: int, master: bool, moments: int = 2, compensated: bool = False) -> tuple[str, str]:
    """The same for the adaptive bases (v: the second moments; without amsgrad): every phase reads the
    moments (the extrapolation looks ahead with them) and only the updates store them. `moments` is
    csrc/extrap_math.h's Moments: 2 Adam's m and v, 1 Adagrad's sum v alone (no m), 4 NovoGrad's m alone (its
    second moment is one norm per tensor, not an array). `compensated`: as moved_arrays' (m and v kept)."""
    if compensated:
        return "xrgmv", "xrmv"
    if phase == 0:
        reads, writes = ("s" if master else "x") + "gmv", "x" if master else "xs"
    elif phase == 4:  # the anchor-free past update recovers s from x and the moments: torch's fused AdamW's
        reads, writes = "xgmv", "xmv"
    else:
        reads, writes = "sgmv", "xmv" if phase == 1 and not master else "xsmv"
    dropped = {1: "m", 2: "", 4: "v"}[moments]
    if dropped:
        reads, writes = reads.replace(dropped, ""), writes.replace(dropped, "")
    return reads, writes
