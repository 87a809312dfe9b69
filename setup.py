"""Builds extrap_kernels._C: the fused CPU kernel always, the CUDA kernels when torch has CUDA. The
package's metadata is in pyproject.toml.

`pip install --no-build-isolation --no-deps .` (or `-e .`): torch must already be installed, since the
extension is compiled against it. EXTRAP_FORCE_CUDA=1 builds the CUDA sources even where no GPU is visible
(nvcc and a CUDA build of torch are enough); EXTRAP_NO_CUDA=1 skips them. EXTRAP_UNOPTIMIZED=1 compiles the C++
(and the CUDA sources' host code) at -O0, in a tenth of the time: for checks of the build itself (CI's install and
CUDA-torch builds), never for use.
"""

import glob
import os
import sys

from setuptools import setup

try:
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "extrap-kernels compiles its extension against the installed PyTorch, and this Python has none "
        f"({sys.executable}). Install torch first (pip install torch), then this package with build "
        "isolation off: pip install --no-build-isolation --no-deps ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    if os.environ.get("EXTRAP_NO_CUDA") == "1":
        return False
    import torch

    if torch.version.cuda is None or CUDA_HOME is None:
        return False
    return os.environ.get("EXTRAP_FORCE_CUDA") == "1" or torch.cuda.is_available()


def _extension():
    cpu_sources = ["csrc/bindings.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # (-fno-math-errno: sqrt without the errno branch, which keeps GCC from vectorizing the adaptive loops; -g0:
    # Python's CFLAGS ask for debug information, which for the kernels' thousands of loop instances took a third
    # of the compile time and 90% of a 140 MB object)
    opt = "-O0" if os.environ.get("EXTRAP_UNOPTIMIZED") == "1" else "-O3"
    cxx = [opt, "-g0", "-std=c++17", "-fopenmp", "-fno-math-errno"]  # at::parallel_for is OpenMP in torch's builds
    include = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        return CppExtension("extrap_kernels._C", cpu_sources, include_dirs=include, extra_compile_args={"cxx": cxx})
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    return CUDAExtension(
        "extrap_kernels._C",
        cpu_sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=include,
        define_macros=[("EXTRAP_WITH_CUDA", None)],
        # (--threads 0: nvcc compiles the architectures at once, on every core; `opt` is its host code's level, the
        # device code is optimized either way: unoptimized, make cuda-torch-check's build took 246 s, not 272)
        extra_compile_args={"cxx": cxx, "nvcc": [opt, "-std=c++17", "-diag-suppress", "3306", "--threads", "0"]},
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
