# liref — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.liref-installed
RUN_ARGS ?=

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	WANDB_SILENT=true $(BIN)/python -m analysis.pipeline $(RUN_ARGS)

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check probing train analysis tests benchmarks

bench: setup
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	WANDB_MODE=disabled $(BIN)/python -m benchmarks.run_all

clean:
	rm -rf outputs multirun .pytest_cache
