"""Finds the compiled extension `extrap_kernels._C`: the one `setup.py` built, or, where none was
built, a just-in-time build of the same sources (torch.utils.cpp_extension.load) when
EXTRAP_JIT=1. `load()` returns None when neither is there: the package still imports and the
`foreach` and `reference` backends still work.

`load_cuda_emulation()` builds, just in time, the CUDA launcher and kernels compiled for the host
(csrc/emulation): with EXTRAP_CUDA_EMULATION=1 the `cuda` backend runs them on CPU tensors, as the
`triton` backend runs in Triton's interpreter under TRITON_INTERPRET=1. A test build, with small launch
tables, chunks and blocks, so that small tensors cross every boundary the GPU's large ones do."""

from __future__ import annotations

import functools
import glob
import os
import shutil

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
# The emulation's limits (csrc/cuda/multi_tensor_apply.cuh, extrap_cuda.cu): tensors per table and blocks per
# launch, of the large table and of the small one (the fallback for launches limited to 4 KB of arguments),
# elements per chunk, threads per block. 4 threads of 4-element vectors walk a 64-element chunk in 4
# strides; 5 blocks per launch split a 321-element tensor across launches.
EMULATION_LIMITS = {
    "EXTRAP_TABLE_TENSORS": 3,
    "EXTRAP_TABLE_BLOCKS": 5,
    "EXTRAP_SMALL_TABLE_TENSORS": 2,
    "EXTRAP_SMALL_TABLE_BLOCKS": 4,
    "EXTRAP_CHUNK_SIZE": 64,
    "EXTRAP_CUDA_THREADS": 4,
}


@functools.lru_cache(maxsize=None)
def load():
    try:
        from . import _C  # type: ignore[attr-defined]

        return _C
    except ImportError as err:
        if os.environ.get("EXTRAP_JIT") != "1" or not os.path.isdir(_CSRC):
            load.error = str(err)  # type: ignore[attr-defined]
            return None
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        load.error = (
            f"EXTRAP_JIT=1 builds the extension now, which needs a C++17 compiler: {compiler!r} is not "  # type: ignore[attr-defined]
            "on PATH (set CXX, or install one: apt-get install g++)"
        )
        return None
    try:
        return _jit_build()
    except Exception as err:  # a failed build leaves the foreach and reference backends working
        load.error = f"EXTRAP_JIT=1: building the extension failed: {err}"  # type: ignore[attr-defined]
        return None


def _jit_build():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    from torch.utils.cpp_extension import load as cpp_load

    sources = [os.path.join(_CSRC, "bindings.cpp")] + sorted(glob.glob(os.path.join(_CSRC, "cpu", "*.cpp")))
    with_cuda = torch.cuda.is_available() and CUDA_HOME is not None
    flags = ["-O3", "-std=c++17", "-fno-math-errno"]  # (as setup.py)
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(_CSRC, "cuda", "*.cu")))
        flags.append("-DEXTRAP_WITH_CUDA")
    return cpp_load(
        name="extrap_kernels_jit",
        sources=sources,
        extra_include_paths=[_CSRC],
        extra_cflags=flags,
        extra_cuda_cflags=["-O3", "-std=c++17", "-DEXTRAP_WITH_CUDA"],
        with_cuda=with_cuda,
        verbose=False,
    )


def cuda_emulation_requested() -> bool:
    return os.environ.get("EXTRAP_CUDA_EMULATION") == "1"


@functools.lru_cache(maxsize=None)
def load_cuda_emulation():
    """The host build of the CUDA launcher (a module whose operators, torch.ops.<its ops_namespace>, take
    CPU tensors), or None with `load_cuda_emulation.error` saying why."""
    if not os.path.isdir(os.path.join(_CSRC, "emulation")):
        load_cuda_emulation.error = "the CUDA emulation builds from the source tree (csrc/), not found"  # type: ignore[attr-defined]
        return None
    from torch.utils.cpp_extension import load as cpp_load

    flags = ["-O2", "-std=c++17", "-fno-strict-aliasing", "-DEXTRAP_CUDA_EMULATION"]
    flags += [f"-D{name}={value}" for name, value in EMULATION_LIMITS.items()]
    try:
        return cpp_load(
            name="extrap_kernels_cuda_emulation",
            sources=[os.path.join(_CSRC, "bindings.cpp"), os.path.join(_CSRC, "emulation", "cuda_on_host.cpp")],
            extra_include_paths=[_CSRC],
            extra_cflags=flags,
            verbose=False,
        )
    except Exception as err:
        load_cuda_emulation.error = f"building the CUDA emulation failed: {err}"  # type: ignore[attr-defined]
        return None
