"""Finds the compiled extension `extrap_kernels._C`: the one `setup.py` built, or, where none was
built, a just-in-time build of the same sources (torch.utils.cpp_extension.load) when
EXTRAP_JIT=1. `load()` returns None when neither is there: the package still imports and the
`foreach` and `reference` backends still work."""
from __future__ import annotations

import functools
import glob
import os
import shutil

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


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
        load.error = (f"EXTRAP_JIT=1 builds the extension now, which needs a C++17 compiler: {compiler!r} is not "  # type: ignore[attr-defined]
                      "on PATH (set CXX, or install one: apt-get install g++)")
        return None
    try:
        return _jit_build()
    except Exception as err:  # a failed build leaves the foreach and reference backends working
        load.error = f"EXTRAP_JIT=1: building the extension failed: {err}"  # type: ignore[attr-defined]
        return None


def _jit_build():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, load as cpp_load

    sources = [os.path.join(_CSRC, "bindings.cpp")] + sorted(glob.glob(os.path.join(_CSRC, "cpu", "*.cpp")))
    with_cuda = torch.cuda.is_available() and CUDA_HOME is not None
    flags = ["-O3", "-std=c++17"]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(_CSRC, "cuda", "*.cu")))
        flags.append("-DEXTRAP_WITH_CUDA")
    return cpp_load(name="extrap_kernels_jit", sources=sources, extra_include_paths=[_CSRC],
                    extra_cflags=flags, extra_cuda_cflags=["-O3", "-std=c++17", "-DEXTRAP_WITH_CUDA"],
                    with_cuda=with_cuda, verbose=False)
