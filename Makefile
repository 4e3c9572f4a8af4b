# famlab: every verb of the project. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch on this kind of machine; override on a GPU cluster, e.g.
#   make install TORCH_SPEC='torch>=2.5'
TORCH_SPEC ?= torch==2.13.0
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-k stream'
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-fast test-slow lint format bench clean

help: ## list every target
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv, install torch ($(TORCH_SPEC)) and famlab with dev extras

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) lint ## install if needed, lint, run the test suite (not the slow tests)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

test-fast: $(STAMP) ## run the suite without lint, single process
	$(BIN)/python -m pytest -q -m "not slow" -x $(PYTEST_ARGS)

test-slow: $(STAMP) ## run only the slow tests
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP) ## training-step throughput, peak memory and matmul FLOP/s (writes bench/results/)
	$(BIN)/python -m famlab.bench $(BENCH_ARGS)

clean: ## remove the venv and caches (keeps runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
