// The CUDA launcher and its kernels, compiled for the host (EXTRAP_CUDA_EMULATION: csrc/cuda/runtime.h runs
// every block and thread of a launch in turn on the CPU). Not part of the extension: the tests build it
// with csrc/bindings.cpp into a module of its own (extrap_kernels/_ext.py, load_cuda_emulation), whose
// operators take CPU tensors, and hold it to the reference like every other backend. The device code is
// included, not copied, so what the tests check is what nvcc compiles.
#ifndef EXTRAP_CUDA_EMULATION
#error "build with -DEXTRAP_CUDA_EMULATION (extrap_kernels/_ext.py, load_cuda_emulation)"
#endif
#include "../cuda/extrap_cuda.cu"
