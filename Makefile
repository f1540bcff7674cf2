# `make demo`: set up and embed + search the bundled corpus. `make test`: set up and run every check
# (ruff, the import-linter layer contract, the strict docs build, the test suite).
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
	$(PY) -m pip install -q -e ".[test,tpu,hub,docs]"
	touch $(VENV)/.runtime $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

# The CLI's `search` on the bundled corpus; without weights it prints one line on how to get them.
demo: $(VENV)/.runtime
	$(VENV)/bin/embeddinggemma search -k 3 -q "Which planet is known as the Red Planet?" \
		-q "How do I compile a function for TPU?" -q "capital of Germany"

# ruff, and the layer contract: imports only point down the package's layers, no library module sees argparse.
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The docs site builds with no warning (a broken link or anchor fails), then the suite runs.
test: lint
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(VENV)/site
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile --durations=15
