# Every target creates the virtual environment first if it is missing (idempotent: re-installs only when
# pyproject.toml changes). On this project's machines the offline dataset mirror ../shared/data is used
# automatically when present; elsewhere set WORKBENCH_DATA or let torchvision download.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= cpu
# pip installs without compiling every module of every package (--no-compile: on 2 cores 1:05 instead of 1:53, most
# of them never imported); Python compiles a module when first imported and keeps the bytecode, which these targets
# let it write even where PYTHONDONTWRITEBYTECODE is set (else torch, ray and jupyter would be compiled again in
# every process: 13.6 s against 5.0 s to import the workbench's stack)
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL := $(BIN)/python -m pip install --no-compile

ifeq ($(origin WORKBENCH_DATA), undefined)
  ifneq ($(wildcard ../shared/data),)
    export WORKBENCH_DATA := $(abspath ../shared/data)
  endif
endif

.PHONY: venv reproduce smoke-jobs test ui-test chromium lab lint assets clean-cache

venv: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e ".[dev,distributed]"
	touch $@

## reproduce: run the paper notebooks with papermill at SCALE (default cpu) and write outputs/<scale>/report.md
reproduce: venv
	$(BIN)/python -m workbench reproduce --scale $(SCALE)

## smoke-jobs: every paper's smoke job graph (what the smoke notebooks load), inline: on 2 cores a local Ray cluster of
## 2 workers took 360 s against inline's 173 s (two jobs of 2 torch threads each on 2 cores; tests/test_engines.py
## runs Ray and submitit); JOBS_ARGS="--executor ray --workers 2" runs it on Ray
smoke-jobs: venv
	WORKBENCH_SCALE=smoke $(BIN)/python -m workbench jobs run --scale smoke $(JOBS_ARGS)

## test: the smoke jobs, the unit tests, then every notebook at smoke scale (nbval), which must only load
## (WORKBENCH_CACHE_ONLY=1: a notebook that would train or compute anything the jobs did not fails). Both pytest runs
## spread over TEST_WORKERS processes (pytest-xdist; default one per core) of one torch thread each: most tests and
## cells are too small for torch's threads, so on 2 cores two one-thread workers took 3:46 against one two-thread
## process's 5:06 (unit tests) and 1:08 against 1:47 (notebooks; a notebook's cells stay on one worker, in order)
TEST_WORKERS ?= auto
test: smoke-jobs
	WORKBENCH_SCALE=smoke OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist worksteal
	WORKBENCH_SCALE=smoke WORKBENCH_CACHE_ONLY=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest notebooks \
	  -n $(TEST_WORKERS) --dist loadfile

## ui-test: every walkthrough widget in JupyterLab in headless Chromium (Playwright), and the reproduced HTML pages
## offline; screenshots in outputs/ui/. Installs Debian's chromium and the `ui` extra first.
ui-test: venv chromium $(VENV)/.ui-installed smoke-jobs
	WORKBENCH_SCALE=smoke WORKBENCH_CACHE_ONLY=1 $(BIN)/python -m pytest tests/ui $(UI_TEST_ARGS)

$(VENV)/.ui-installed: pyproject.toml | $(VENV)/.installed
	$(PIP_INSTALL) -e ".[dev,distributed,ui]"
	touch $@

chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$WORKBENCH_CHROMIUM" ] || { \
	  [ "$$(id -u)" = 0 ] || { echo "ui-test needs Debian's chromium: sudo apt-get install chromium"; exit 1; }; \
	  apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; }

## lab: JupyterLab on the notebooks
lab: venv
	$(BIN)/jupyter lab notebooks

lint: venv
	$(BIN)/ruff check .

## assets: retrain the small models committed under data/assets (only if their config changed)
assets: venv
	$(BIN)/python -m workbench assets

clean-cache:
	rm -rf data/cache outputs
