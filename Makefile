# The two commands: `make reports` (the main job) and `make test`.
# Both bootstrap .venv: create it and `pip install -e '.[dev]'` when it is
# missing or when pyproject.toml is newer than the last install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= demo
PYTEST_ARGS ?=

.PHONY: reports test venv chromium bids-validator bench clean-reports lab

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (studylib)" >/dev/null
	@touch $(STAMP)

# Headless Chromium for the report browser check (Debian package; needs root or sudo).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

reports: $(STAMP)
	$(VENV)/bin/studylib run --preset $(PRESET) --reports reports

# JupyterLab on the notebooks with the project's kernel (python3, installed into .venv); jupytext's
# .py notebooks open as notebooks on a double click (a default-viewer setting kept inside .venv).
# A lab's own study: make lab NOTEBOOKS=path/to/study/notebooks
NOTEBOOKS ?= notebooks
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
lab: $(STAMP)
	@mkdir -p $(dir $(LAB_SETTINGS))
	@$(VENV)/bin/jupytext-config --settings-file $(LAB_SETTINGS) set-default-viewer python >/dev/null
	$(VENV)/bin/jupyter lab --notebook-dir=$(NOTEBOOKS) $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# The BIDS validator (npm bids-validator 1.x, node >= 18) checks `studylib export` folders in the tests;
# installed into .tools/ (node and npm from Debian's packages when missing).
BIDS_VALIDATOR := .tools/bids-validator/node_modules/.bin/bids-validator
bids-validator: $(BIDS_VALIDATOR)
$(BIDS_VALIDATOR):
	@command -v npm >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	npm install --silent --no-audit --no-fund --prefix .tools/bids-validator bids-validator@1.15.0

test: $(STAMP) chromium $(BIDS_VALIDATOR)
	$(PY) -m pytest $(PYTEST_ARGS)

# Peers (osipy needs Python >= 3.12) live in .venv-bench; the benchmarks call them there and
# report a peer that cannot install or run instead of hiding it.
BENCH_PYTHON ?= $(shell command -v python3.12 || ls /root/.pyenv/versions/3.12*/bin/python3 2>/dev/null | head -1 || echo python3)
.venv-bench/.installed: pyproject.toml
	@test -x .venv-bench/bin/python || $(BENCH_PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -e . dcmri osipy qmrpy || true
	@touch $@

bench: $(STAMP) .venv-bench/.installed
	$(PY) benchmarks/fits.py
	$(PY) benchmarks/dce.py
	$(PY) benchmarks/scaling.py

clean-reports:
	rm -rf reports/*.html reports/*.ipynb reports/*.json reports/*.png reports/*.pdf reports/*_files
