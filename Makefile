# The two set-up commands of the README: `make demo` and `make test`. Both create the virtualenv,
# install torch (CPU wheel) and the test dependencies, and build the extension, the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
PYTEST_ARGS ?=

.PHONY: test demo build bench bench-micro gpu-report cmake-check cuda-check cuda-torch-check install-check clean

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

demo: build
	$(PY) python/demo.py

# The same extension built by CMake (CMakeLists.txt) instead of setup.py, and imported.
cmake-check: $(VENV)/.deps
	mkdir -p build
	cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release > build/cmake.log 2>&1 || (cat build/cmake.log; exit 1)
	cmake --build build/cmake
	$(PY) -c "import sys, torch, importlib.util, glob; \
	path = glob.glob('build/cmake/_C*.so')[0]; \
	spec = importlib.util.spec_from_file_location('_C', path); mod = importlib.util.module_from_spec(spec); \
	spec.loader.exec_module(mod); ops = [n for n in ('extrapolate_', 'update_', 'update_past_', 'update_noise_', 'check') \
	if hasattr(torch.ops.extrap_kernels, n)]; assert len(ops) == 5 and hasattr(mod, 'noise'), ops; \
	print('cmake build OK:', path, 'registers torch.ops.extrap_kernels.' + ', '.join(ops))"

# Every .cu file compiles with nvcc for sm_80 and sm_90 (no GPU needed; torch's host headers suffice,
# since the CUDA sources take their stream from csrc/bindings.cpp). A compile error fails; so does a kernel
# that spills or a hot kernel whose SASS lacks 128-bit loads and stores (tests/cuda_sass.py).
NVCC ?= $(or $(wildcard /usr/local/cuda/bin/nvcc),nvcc)
cuda-check: $(VENV)/.deps
	@mkdir -p build/nvcc
	set -e; inc=$$($(PY) -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths() + [sysconfig.get_paths()['include']]))"); \
	for f in csrc/cuda/*.cu; do \
	  echo "nvcc $$f (sm_80, sm_90)"; \
	  $(NVCC) -c -std=c++17 -O3 -DEXTRAP_WITH_CUDA -Icsrc $$inc -diag-suppress 3306 \
	    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 $$f -o build/nvcc/$$(basename $$f).o; \
	done
	$(PY) tests/cuda_sass.py --arch 80,90 --nvcc $(NVCC) --out build/sass

# The whole CUDA extension (setup.py's CUDAExtension: C++ and CUDA objects, linked) built against the
# CUDA build of torch $(TORCH_VERSION) in its own virtualenv, then imported. That torch comes from PyPI, so
# the machine's CPU wheel (pip's find-links) is kept out; its nvidia packages bring the cu13 headers
# (cublas, cusparse) that torch's CUDA headers name and /usr/local/cuda lacks. No GPU needed.
CUDA_VENV ?= .venv-cuda
CUDA_HOME ?= /usr/local/cuda
$(CUDA_VENV)/.deps:
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(CUDA_VENV)/bin/pip install --quiet \
	  --disable-pip-version-check torch==$(TORCH_VERSION) numpy pybind11 ninja setuptools
	$(CUDA_VENV)/bin/python -c "import torch; assert torch.version.cuda, torch.__version__; print('torch', torch.__version__)"
	touch $@

cuda-torch-check: $(CUDA_VENV)/.deps
	rm -rf build/cuda-torch
	set -e; cu13=$$($(CUDA_VENV)/bin/python -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'include'))"); \
	CPATH=$$cu13 CUDA_HOME=$(CUDA_HOME) EXTRAP_FORCE_CUDA=1 $(CUDA_VENV)/bin/python setup.py --quiet build_ext \
	  --build-lib build/cuda-torch/lib --build-temp build/cuda-torch/tmp > build/cuda-torch.log 2>&1 \
	  || (tail -50 build/cuda-torch.log; exit 1)
	readelf -S build/cuda-torch/lib/extrap_kernels/_C*.so | grep -q nv_fatbin
	cd build/cuda-torch/lib && ../../../$(CUDA_VENV)/bin/python -c "import torch, extrap_kernels._C as C; \
	assert C.has_cuda; print('CUDA extension built and imported against torch', torch.__version__, C.__file__)"

# The README's library install in fresh virtualenvs that have torch: `pip install --no-build-isolation
# --no-deps .` in one without the `wheel` package, `-e .` in one with it; then an import and one step of the
# fused CPU kernel.
INSTALL_CHECK := import torch, extrap_kernels as ek; p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3); \
	opt = ek.ExtrapSGD([p], lr=0.5, momentum=0.9); opt.step(); assert opt.resolved_backends() == \
	{(torch.device('cpu'), torch.float32): 'cpu'}, opt.resolved_backends(); print('installed:', ek.__file__, p.tolist())
install-check:
	rm -rf build/install-check && mkdir -p build/install-check
	set -e; for case in "plain ." "wheel -e ."; do \
	  set -- $$case; venv=build/install-check/$$1; shift; \
	  $(PYTHON) -m venv $$venv; \
	  $$venv/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) setuptools ninja; \
	  if [ "$$(basename $$venv)" = wheel ]; then $$venv/bin/pip install --quiet --disable-pip-version-check wheel; fi; \
	  echo "install-check: pip install --no-build-isolation --no-deps $$* (venv $$(basename $$venv))"; \
	  $$venv/bin/pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps $$* > build/install-check/$$(basename $$venv).log 2>&1 \
	    || (tail -30 build/install-check/$$(basename $$venv).log; exit 1); \
	  (cd build/install-check && ./$$(basename $$venv)/bin/python -c "$(INSTALL_CHECK)"); \
	done

clean:
	rm -rf build $(VENV) $(CUDA_VENV) extrap_kernels/*.so *.egg-info

# Benchmarks (benchmarks/): the full table, JSON and plot for this machine's device, written under out/bench/
# (BENCH_ARGS="--quick" for a one-minute run; "--out benchmarks/results/<device>.json" to replace the committed
# results); and the pytest-benchmark micro-benchmarks of the CPU backend.
bench: build
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

bench-micro: build
	$(PY) -m pytest benchmarks -q --benchmark-only $(PYTEST_ARGS)

# On a lent GPU machine (its python3 has torch, triton, pytest, hypothesis, matplotlib): build the CUDA
# extension, run the GPU tests, the benchmarks, the rest of the suite and one ncu profile within one
# deadline, everything to commit in one folder (benchmarks/gpu_report.py).
# GPU_REPORT_ARGS="--out $$OUT --seconds 540" fits one device call; CI runs GPU_REPORT_ARGS=--dry-run.
GPU_PY ?= python3
gpu-report:
	$(GPU_PY) -m benchmarks.gpu_report $(GPU_REPORT_ARGS)
