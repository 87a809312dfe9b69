# The two set-up commands of the README: `make demo` and `make test`. Both create the virtualenv,
# install torch (CPU wheel) and the test dependencies, and build the extension, the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
SOURCES := setup.py $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
# Two pytest-xdist workers: the suite's time is mostly the Triton interpreter's, which is single-threaded,
# so two workers halve it on CI's 2-core machine (PYTEST_ARGS= runs it in one process).
PYTEST_ARGS ?= -n 2

.PHONY: lint format test demo build bench bench-micro gpu-report gpu-image-check triton-matrix cmake-check cuda-check cuda-torch-check install-check clean

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

# Style (pyproject.toml's [tool.ruff], .clang-format): fails on any difference; `make format` applies them.
CSRC_FILES = $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)
$(VENV)/.lint-deps: requirements-lint.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-lint.txt
	touch $@

lint: $(VENV)/.lint-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CSRC_FILES)

format: $(VENV)/.lint-deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC_FILES)

# The same extension built by CMake (CMakeLists.txt) instead of setup.py, and imported. Unoptimized (a Debug build
# at -O0, in a tenth of the time): this checks the build; make test checks the optimized kernels.
cmake-check: $(VENV)/.deps
	mkdir -p build
	cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_CXX_FLAGS_DEBUG=-O0 > build/cmake.log 2>&1 || (cat build/cmake.log; exit 1)
	cmake --build build/cmake
	$(PY) -c "import sys, torch, importlib.util, glob; \
	path = glob.glob('build/cmake/_C*.so')[0]; \
	spec = importlib.util.spec_from_file_location('_C', path); mod = importlib.util.module_from_spec(spec); \
	spec.loader.exec_module(mod); ops = [n for n in ('extrapolate_', 'update_', 'update_past_', 'update_noise_', 'check') \
	if hasattr(torch.ops.extrap_kernels, n)]; assert len(ops) == 5 and hasattr(mod, 'noise'), ops; \
	print('cmake build OK:', path, 'registers torch.ops.extrap_kernels.' + ', '.join(ops))"

# The CUDA sources compile with nvcc for sm_80 and sm_90 (no GPU needed; torch's host headers suffice, since
# the CUDA sources take their stream from csrc/bindings.cpp): tests/cuda_sass.py compiles csrc/cuda/extrap_cuda.cu
# (the one .cu file, which includes the rest) to a cubin per arch, both at once. A compile error fails; so does a
# kernel that spills or a hot kernel whose SASS lacks 128-bit loads and stores.
NVCC ?= $(or $(wildcard /usr/local/cuda/bin/nvcc),nvcc)
cuda-check: $(VENV)/.deps
	test "$$(ls csrc/cuda/*.cu)" = csrc/cuda/extrap_cuda.cu  # (a new .cu file must join the check)
	$(PY) tests/cuda_sass.py --arch 80,90 --nvcc $(NVCC) --out build/sass

# The whole CUDA extension (setup.py's CUDAExtension: C++ and CUDA objects, linked) built against the
# CUDA build of torch $(TORCH_VERSION) in its own virtualenv, then imported. That torch comes from PyPI, so
# the machine's CPU wheel (pip's find-links) is kept out; its nvidia packages bring the cu13 headers
# (cublas, cusparse) that torch's CUDA headers name and /usr/local/cuda lacks. No GPU needed. For sm_90 alone, and
# its C++ unoptimized (setup.py's EXTRAP_UNOPTIMIZED): cuda-check compiled the device code for both architectures.
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
	CPATH=$$cu13 CUDA_HOME=$(CUDA_HOME) EXTRAP_FORCE_CUDA=1 EXTRAP_UNOPTIMIZED=1 TORCH_CUDA_ARCH_LIST=9.0 \
	  $(CUDA_VENV)/bin/python setup.py --quiet build_ext --build-lib build/cuda-torch/lib --build-temp build/cuda-torch/tmp > build/cuda-torch.log 2>&1 \
	  || (tail -50 build/cuda-torch.log; exit 1)
	readelf -S build/cuda-torch/lib/extrap_kernels/_C*.so | grep -q nv_fatbin
	cd build/cuda-torch/lib && ../../../$(CUDA_VENV)/bin/python -c "import torch, extrap_kernels._C as C; \
	assert C.has_cuda; print('CUDA extension built and imported against torch', torch.__version__, C.__file__)"

# Copies the tracked tree (the files a clean clone has) into the folder that follows it, for the checks that build
# or install from a copy.
COPY_TRACKED_TO = git ls-files -z | xargs -0 cp --parents -t

# The README's library install in fresh virtualenvs that have torch: `pip install --no-build-isolation
# --no-deps .` in one without the `wheel` package, `-e .` in one with it; then an import and one step of the
# fused CPU kernel. Unoptimized (setup.py's EXTRAP_UNOPTIMIZED): this checks the install, make test the kernels.
INSTALL_CHECK := import torch, extrap_kernels as ek; p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3); \
	opt = ek.ExtrapSGD([p], lr=0.5, momentum=0.9); opt.step(); assert opt.resolved_backends() == \
	{(torch.device('cpu'), torch.float32): 'cpu'}, opt.resolved_backends(); print('installed:', ek.__file__, p.tolist())
# On a copy of the tracked tree: an editable install builds the extension into its tree, and this one, unoptimized,
# would take the place of the optimized module that the virtualenv of make test and make demo imports.
install-check:
	rm -rf build/install-check && mkdir -p build/install-check/tree
	$(COPY_TRACKED_TO) build/install-check/tree
	set -e; for case in "plain ." "wheel -e ."; do \
	  set -- $$case; venv=build/install-check/$$1; shift; \
	  $(PYTHON) -m venv $$venv; \
	  $$venv/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) setuptools ninja; \
	  if [ "$$(basename $$venv)" = wheel ]; then $$venv/bin/pip install --quiet --disable-pip-version-check wheel; fi; \
	  echo "install-check: pip install --no-build-isolation --no-deps $$* (venv $$(basename $$venv))"; \
	  (cd build/install-check/tree && EXTRAP_UNOPTIMIZED=1 ../$$(basename $$venv)/bin/pip install --quiet \
	    --disable-pip-version-check --no-build-isolation --no-deps $$* > ../$$(basename $$venv).log 2>&1) \
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
	$(PY) -m pytest benchmarks -q --benchmark-only $(BENCH_PYTEST_ARGS)

# The Triton kernels' ahead-of-time compile and PTX check (tests/triton_aot.py) under the other Triton versions
# that GPU users run: the GPU image's (torch 2.11's pin) and the newest release. make test runs it under the
# pinned one (requirements-dev.txt: torch $(TORCH_VERSION)'s CUDA build pins triton 3.7.1). Each version is
# installed on its own into build/triton-<version> and put before the venv's on the path. CI checks the hot
# kernels' PTX (every one 128-bit, and the unaligned controls scalar) for sm_80 and sm_90 in each; the GPU
# image's whole cover compiles in make gpu-image-check.
TRITON_MATRIX ?= 3.6.0 3.9.0
TRITON_MATRIX_ARGS ?= --arch 80,90 --cover hot
triton-matrix: $(VENV)/.deps
	set -e; for v in $(TRITON_MATRIX); do \
	  test -f build/triton-$$v/.done || { rm -rf build/triton-$$v; $(PY) -m pip install --quiet \
	    --disable-pip-version-check --no-deps --target build/triton-$$v triton==$$v; touch build/triton-$$v/.done; }; \
	  PYTHONPATH=build/triton-$$v:. $(PY) tests/triton_aot.py $(TRITON_MATRIX_ARGS); \
	done

# The lent GPU machine's software, rehearsed here so that its short lease is not spent on a version mismatch:
# its image runs torch 2.11.0+cu130 and triton 3.6.0 (benchmarks/gpu_image.txt), and PyPI has both. In a
# virtualenv of its own (Python is this machine's, 3.11; the image's is 3.12), on a copy of the tracked tree:
# the whole CUDA extension built as the report's build step builds it there (sm_90), imported; a stated subset of
# the CPU suite (the API, citizenship, errors, every backend against the reference, the emulated CUDA launcher);
# the Triton kernels' whole AOT cover and PTX check under 3.6.0; then benchmarks/gpu_report.py's dry run and
# the parts of its steps that run without a GPU (the GPU tests' collection, a quick benchmark on the CPU).
GPU_IMAGE_VENV ?= .venv-gpu-image
GPU_IMAGE_TORCH ?= 2.11.0
GPU_IMAGE_TRITON ?= 3.6.0
GPU_IMAGE_TREE := build/gpu-image/tree
GPU_IMAGE_TESTS ?= tests/test_api.py tests/test_conformance.py tests/test_checkpoint.py tests/test_errors.py \
	tests/test_operators.py tests/test_backends.py tests/test_adaptive.py tests/test_adaptive_kernels.py \
	tests/test_cuda_emulation.py tests/test_amp.py tests/test_capturable.py tests/test_install.py \
	tests/test_gpu_report.py
$(GPU_IMAGE_VENV)/.deps: requirements-dev.txt
	test -x $(GPU_IMAGE_VENV)/bin/python || $(PYTHON) -m venv $(GPU_IMAGE_VENV)
	mkdir -p build/gpu-image && grep -v '^triton' requirements-dev.txt > build/gpu-image/requirements.txt
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(GPU_IMAGE_VENV)/bin/pip install --quiet \
	  --disable-pip-version-check torch==$(GPU_IMAGE_TORCH) triton==$(GPU_IMAGE_TRITON) setuptools \
	  -r build/gpu-image/requirements.txt
	touch $@

gpu-image-check: $(GPU_IMAGE_VENV)/.deps
	rm -rf $(GPU_IMAGE_TREE) && mkdir -p $(GPU_IMAGE_TREE)
	$(COPY_TRACKED_TO) $(GPU_IMAGE_TREE)
	set -e; py=$(abspath $(GPU_IMAGE_VENV))/bin/python; cd $(GPU_IMAGE_TREE); \
	$$py -c "import torch, triton; print('gpu-image-check: torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"; \
	cu13=$$($$py -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'include'))"); \
	CPATH=$$cu13 CUDA_HOME=$(CUDA_HOME) EXTRAP_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 $$py setup.py --quiet build_ext \
	  --inplace > ../build.log 2>&1 || (tail -50 ../build.log; exit 1); \
	$$py -c "import torch, extrap_kernels as ek, extrap_kernels._C as C; assert C.has_cuda; \
	print('CUDA extension built and imported against torch', torch.__version__)"; \
	HYPOTHESIS_PROFILE=dev $$py -m pytest -q -p no:cacheprovider $(GPU_IMAGE_TESTS); \
	$$py -m pytest -q -p no:cacheprovider tests/test_gpu.py; \
	PYTHONPATH=. $$py tests/triton_aot.py --arch 90; \
	$$py -m benchmarks.gpu_report --dry-run; \
	$$py -m benchmarks.bench --quick --workloads tensors-161 --dtypes float32 --repeats 2 --out ../bench.json

# On a lent GPU machine (its python3 has torch, triton, pytest, hypothesis, matplotlib): build the CUDA
# extension, run the GPU tests, the benchmarks, the rest of the suite and one ncu profile within one
# deadline, everything to commit in one folder (benchmarks/gpu_report.py).
# GPU_REPORT_ARGS="--out $$OUT --seconds 540" fits one device call; CI runs GPU_REPORT_ARGS=--dry-run.
GPU_PY ?= python3
gpu-report:
	$(GPU_PY) -m benchmarks.gpu_report $(GPU_REPORT_ARGS)
