# Every target creates the virtual environment first if it is missing (idempotent: re-installs only when
# pyproject.toml changes). On this project's machines the offline dataset mirror ../shared/data is used
# automatically when present; elsewhere set WORKBENCH_DATA or let torchvision download.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= cpu

ifeq ($(origin WORKBENCH_DATA), undefined)
  ifneq ($(wildcard ../shared/data),)
    export WORKBENCH_DATA := $(abspath ../shared/data)
  endif
endif

.PHONY: venv reproduce test lab lint assets clean-cache

venv: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

## reproduce: run the paper notebooks with papermill at SCALE (default cpu) and write outputs/<scale>/report.md
reproduce: venv
	$(BIN)/python -m workbench reproduce --scale $(SCALE)

## test: unit tests and every notebook at smoke scale (nbval)
test: venv
	WORKBENCH_SCALE=smoke $(BIN)/python -m pytest

## lab: JupyterLab on the notebooks
lab: venv
	$(BIN)/jupyter lab notebooks

lint: venv
	$(BIN)/ruff check workbench tests

## assets: retrain the small models committed under data/assets (only if their config changed)
assets: venv
	$(BIN)/python -m workbench assets

clean-cache:
	rm -rf data/cache outputs
