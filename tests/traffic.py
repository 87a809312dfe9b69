"""What each phase moves, for the checks that read compiled kernels (triton_aot.py's PTX check, cuda_sass.py's
SASS check): SPEC's traffic, as csrc/extrap_math.h's reads_param, stores_anchor and stores_momentum say (and, for the
adaptive bases, csrc/cuda/extrap_cuda.cu's adaptive_kernel)."""

from __future__ import annotations


def moved_arrays(phase: int, master: bool) -> tuple[str, str]:
    """The arrays (x, g, s, m) a phase with momentum reads and writes; `master`: s is a 16-bit x's fp32
    master. The extrapolation reads m only to extrapolate along it, so not here."""
    if phase == 0:
        return "gs" if master else "gx", "x" if master else "xs"
    if phase == 4:
        return "xgm", "mx"
    return "sgm", "mxs" if phase != 1 or master else "mx"


def adaptive_moved_arrays(phase: int, master: bool, first_moment: bool = True) -> tuple[str, str]:
    """The same for the adaptive bases (v: the second moments; without amsgrad): every phase reads the
    moments (the extrapolation looks ahead with them) and only the updates store them. Adagrad
    (`first_moment` False) moves no m."""
    if phase == 0:
        reads, writes = ("s" if master else "x") + "gmv", "x" if master else "xs"
    else:
        reads, writes = "sgmv", "xmv" if phase == 1 and not master else "xsmv"
    if not first_moment:
        reads, writes = reads.replace("m", ""), writes.replace("m", "")
    return reads, writes
