# The project's commands. Each bootstraps .venv on first use (torch pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The tests whose results depend on the CPU's vector instructions (kernels, rounding, path symmetry).
CPU_TESTS := tests $(patsubst %,--ignore=%,$(wildcard tests/test_study*.py)) --ignore=tests/test_bench.py

AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

.PHONY: run test test-avx2 test-generic wheel-check bench lint clean

# The install compiles the native backend's kernels (setup.py: one module per x86-64 level, about 3 minutes on
# 2 cores), against the torch installed first (--no-build-isolation).
NATIVE_SRC := setup.py src/cerebral_rnn/backends/_build.py src/cerebral_rnn/backends/native_kernels.cpp

$(STAMP): pyproject.toml constraints.txt $(NATIVE_SRC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch numpy ninja 'setuptools>=70.1'
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-build-isolation -e '.[dev,study]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/cerebral-rnn reproduce --preset quick --out runs/quick --resume

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The CPU-sensitive tests again with the AVX2 code paths forced: torch's own kernels
# (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA), MKL's GEMMs (MKL_ENABLE_INSTRUCTIONS; MKL picks its
# kernels itself otherwise) and the native backend, which follows torch's capability (built for x86-64-v3).
# An AVX-512 machine then proves the AVX2 paths as well. x86-64 only.
test-avx2: $(STAMP)
	@if [ "$$(uname -m)" != x86_64 ]; then echo "test-avx2: not an x86-64 machine, nothing to force"; exit 0; fi; \
	$(AVX2_ENV) $(BIN)/python -c \
	  "import torch; print('test-avx2: torch CPU capability', torch.backends.cpu.get_cpu_capability())"; \
	$(AVX2_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider $(CPU_TESTS)

# The native backend's generic build (no -march: ATen's portable vectors, what an ARM machine compiles) and the
# symmetry tests on it, with torch's own kernels at their DEFAULT capability too.
test-generic: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_symmetry.py

# `pip wheel .` from this checkout, installed into a fresh environment whose PATH has no compiler and no ninja:
# the native backend must run from its first call (a few minutes: the wheel compiles every variant).
wheel-check: $(STAMP)
	bash .ci/wheel-check

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
