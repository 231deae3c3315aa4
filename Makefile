# Two commands: `make demo` (set up + run the main job on the embedded default) and
# `make test` (set up + run the tests). Both create .venv here and install everything.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# llama.cpp's native build can emit instructions (AMX, AVX-512) that a VM advertises but then
# faults on (SIGILL, seen on our machines): build the embedded server for plain AVX2 on x86_64.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: demo test test-all bench clean redis-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# CPU torch from local disk for development; the library itself asks only torch>=2.4.
	$(PY) -m pip install -q torch==2.13.0
	@echo "installing vas_proxy[local,personal,rl,dev] (llama-cpp-python compiles once, ~4 min)"
	$(PY) -m pip install -q -e '.[local,personal,rl,dev]'
	@# llama.cpp's C++ server, the embedded default and the second real upstream (tests):
	@# built once from pinned source, cached outside the checkout
	PYTHON=$(PY) bash scripts/build-llama-server.sh $(VENV)/bin
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vas-proxy demo

# The Redis tests run a real redis-server: Debian's package, installed once when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-server:
	@command -v redis-server >/dev/null || { echo "installing Debian's redis-server (tests)"; \
	  $(SUDO) apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; }

test: $(STAMP) redis-server
	$(PY) -m pytest --durations=25

test-all: $(STAMP) redis-server
	$(PY) -m pytest -m ''

bench: $(STAMP)
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_loop.py

clean:
	rm -rf $(VENV) .pytest_cache
