# make install: a Python environment with torch, the build and test deps, and qkernels built
#               against that torch. Reuses the current Python when it already imports torch (the
#               GPU machine: no network, torch preinstalled); otherwise creates .venv with the
#               pinned CPU torch.
# make test:    install, then the native C++ tests (x86 and aarch64 under qemu) and pytest.
# make bench:   install, then the quick benchmark suite.
SHELL := /bin/bash
TORCH_VERSION ?= 2.13.0
HOST_PYTHON ?= python3
PYTHON := $(shell if $(HOST_PYTHON) -c "import torch" >/dev/null 2>&1; then command -v $(HOST_PYTHON); else echo $(CURDIR)/.venv/bin/python; fi)
PIP := $(PYTHON) -m pip
# Import name:requirement of what the build and the tests need; only missing ones are installed.
DEPS := scikit_build_core:scikit-build-core>=0.10 ninja:ninja numpy:numpy rich:rich>=13 \
        safetensors:safetensors pytest:pytest>=8 hypothesis:hypothesis>=6.100 \
        transformers:transformers>=4.50 accelerate:accelerate>=0.26
# Installed when the package index can be reached; the tests that need them skip otherwise
# (the GPU machine has no network and no gguf). triton here runs the Triton kernels' tests
# under TRITON_INTERPRET=1 on the CPU.
OPTIONAL_DEPS := gguf:gguf>=0.10 triton:triton>=3.6
PYTEST_ARGS ?=
# The requirements in the list $(1) (import:requirement) whose import fails, as a shell expression.
missing_of = $$(for dep in $(foreach d,$(1),'$(d)'); do $(PYTHON) -c "import $${dep%%:*}" 2>/dev/null || echo "$${dep\#*:}"; done)

.PHONY: install test test-native test-python bench clean

$(CURDIR)/.venv/bin/python:
	$(HOST_PYTHON) -m venv $(CURDIR)/.venv
	$(CURDIR)/.venv/bin/python -m pip install -q "torch==$(TORCH_VERSION)"

install: $(filter $(CURDIR)/.venv/bin/python,$(PYTHON))
	@missing=$(call missing_of,$(DEPS)); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; echo "$$missing" | xargs $(PIP) install -q; fi
	@missing=$(call missing_of,$(OPTIONAL_DEPS)); \
	if [ -n "$$missing" ]; then echo "$$missing" | xargs $(PIP) install -q || echo "not installed (optional, their tests skip): $$missing"; fi
	$(PIP) install -q --no-build-isolation --no-deps .
	@$(PYTHON) -c "import qkernels as qk; print('qkernels', qk.__version__, 'backends:', qk.available_backends())"

test-native:
	bash tests/native/run.sh
	bash tests/native/nvcc_check.sh

test-python:
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test: install test-native test-python

bench: install
	$(PYTHON) -m qkernels.bench.cli --suite quick

clean:
	rm -rf build dist .pytest_cache
