# `make demo`: set up and embed + search the bundled corpus. `make test`: set up and run every check.
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests run on the CPU with 8 virtual devices (sharding tests); the TPU extra is only for AOT compiles.
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8

.PHONY: demo test lint setup setup-test

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

# torch==2.13.0 first: the CPU wheel (a plain `torch` requirement would pull a multi-GB CUDA build).
$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,tpu,hub]"
	touch $(VENV)/.runtime $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

# The CLI's `search` on the bundled corpus; without weights it prints one line on how to get them.
demo: $(VENV)/.runtime
	$(VENV)/bin/embeddinggemma search -k 3 -q "Which planet is known as the Red Planet?" \
		-q "How do I compile a function for TPU?" -q "capital of Germany"

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile --durations=15
