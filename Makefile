# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= default
# Tests never touch the network; the demo may (only if CONFIG points at the hub).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test lint notebooks clean-data help

help:
	@echo "make demo   set up .venv, train and evaluate the default model on ShapeStories"
	@echo "make test   set up .venv with the dev extra, lint and run the test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# Generate ShapeStories, train the preset, evaluate on the test split, print the table.
demo: $(VENV)/.installed
	$(BIN)/cmar data --config $(CONFIG)
	$(BIN)/cmar train --config $(CONFIG) --set name=demo --overwrite
	$(BIN)/cmar evaluate runs/demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check cmar tests tools

test: $(VENV)/.installed-dev lint
	$(OFFLINE) $(BIN)/python -m pytest -q
	$(OFFLINE) CMAR_SMOKE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax \
		--nbval-current-env --nbval-cell-timeout=600 notebooks/

# Re-execute every notebook in full mode, outputs kept (a few tens of minutes on a CPU).
notebooks: $(VENV)/.installed-dev
	$(BIN)/python tools/run_notebooks.py

clean-data:
	rm -rf data/shapestories data/frames data/features
