# Two commands on a fresh machine: `make notebooks` and `make test`. Each target creates and
# reuses the project virtual environment (.venv) by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
# Tests and CI read the real MNIST / Fashion-MNIST files from ../shared/data when it exists.
export TVMLIB_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),$(abspath data))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: test lint unit notebooks lab readme clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, tvmlib, papermill, nbval, ot"
	touch $@

## make test: lint + unit tests + every notebook at smoke scale (nbval) + a papermill run
test: $(STAMP)
	$(PY) -m ruff check tvmlib tests notebooks
	$(PY) -m tvmlib.apps.exercises --check
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check tvmlib tests notebooks

unit: $(STAMP)
	$(PY) -m pytest -q -m "not notebook"

## make notebooks: execute every notebook at default scale, refreshing outputs and figures/
notebooks: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		TVMLIB_QUIET=1 $(PY) -m papermill $$nb $$nb --cwd notebooks -k python3 \
			--request-save-on-cell-execute --progress-bar || exit 1; \
	done

## make readme: regenerate the README's results tables from figures/*.json
readme: $(STAMP)
	$(PY) -m tvmlib.apps.readme

## make lab: open JupyterLab on the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)
