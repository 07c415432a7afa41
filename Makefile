# Two commands on a fresh machine: `make notebooks` and `make test` (`make browser` first installs
# the browser the browser tests drive). Each target creates and reuses the project virtual
# environment (.venv) by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
# Tests and CI read the real MNIST / Fashion-MNIST files from ../shared/data when it exists.
export TVMLIB_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),$(abspath data))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
PIP_QUIET := --quiet --disable-pip-version-check
# make test: pytest workers (pytest-xdist; a test file stays on one worker)
WORKERS ?= 2
# The exact versions CI passed with (requirements.lock, Linux x86-64, Python 3.11) when the file
# exists; `make test REQUIREMENTS=requirements.txt VENV=.venv-loose` installs the ranges instead.
REQUIREMENTS ?= $(if $(wildcard requirements.lock),requirements.lock,requirements.txt)
export TVMLIB_REQUIREMENTS := $(REQUIREMENTS)
BOOK_DIR ?= _build/book

.PHONY: test lint unit notebooks lab readme clean-venv book exercises grade browser \
	browser-test lock

# --no-compile: Python compiles what is imported on first use instead of every file up front.
$(STAMP): $(REQUIREMENTS) requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --no-compile -r $(REQUIREMENTS) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, tvmlib, papermill, nbval, ot, nbgrader, myst_nb, playwright"
	touch $@

## make test: lint + unit tests + every notebook at smoke scale (nbval) + a papermill run, the
## student copies in sync, grading, the book, and notebook 07 in a browser (needs `make browser`)
test: $(STAMP)
	$(PY) -m ruff check tvmlib tests notebooks
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check tvmlib tests notebooks

unit: $(STAMP)
	$(PY) -m pytest -q -m "not notebook"

## make notebooks: execute every notebook at default scale, refreshing outputs and figures/
notebooks: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		TVMLIB_QUIET=1 $(PY) -m tvmlib.apps.papermill_run $$nb $$nb --cwd notebooks -k python3 \
			--request-save-on-cell-execute --progress-bar || exit 1; \
	done

## make readme: regenerate the README's results tables from figures/*.json
readme: $(STAMP)
	$(PY) -m tvmlib.apps.readme

## make book: the README and the executed notebooks as a static site in $(BOOK_DIR) (open
## $(BOOK_DIR)/index.html); warnings fail the build; links are checked
book: $(STAMP)
	$(PY) -m tvmlib.apps.book --out $(BOOK_DIR)

## make exercises: write the student copies notebooks/exercises/ from the masters (nbgrader)
exercises: $(STAMP)
	$(PY) -m tvmlib.apps.exercises

## make grade SUBMISSIONS=folder [GRADES=grades.csv]: autograde folder/<student>/<notebook>.ipynb
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder [GRADES=grades.csv]" >&2; exit 2; }
	$(PY) -m tvmlib.apps.grade $(SUBMISSIONS) --out $(or $(GRADES),grades.csv)

## make browser: Debian's chromium for the browser tests (apt-get as root; nothing else is fetched)
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ]; then export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		&& chromium --version; \
	else echo "make browser: chromium is missing; run: sudo apt-get install chromium" >&2; exit 1; fi

## make browser-test: notebook 07 and the book in headless chromium; the explorer's
## screenshot goes to figures/07_explorer_browser.png
browser-test: $(STAMP) browser
	TVMLIB_SCREENSHOTS=$(abspath figures) $(PY) -m pytest -q -m browser tests/test_browser.py tests/test_book.py

## make lock: pin the versions of .venv (after a green make test) into requirements.lock
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable 2>/dev/null > requirements.lock
	$(PY) -m piptools compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras \
		--output-file requirements.lock requirements.txt 2>&1 | grep -v "^WARNING: Location" || true

## make lab: open JupyterLab on the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)
