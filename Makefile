# The two commands: `make run` (install, data, notebooks, report) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= full
# Offline corpus beside the checkout; override with MAINRUN_DATA=... or data=hub.
export MAINRUN_DATA ?= $(abspath ../shared/data/hn-stories-2016-2020.parquet)
export MAINRUN_CHECKPOINTS ?= $(HOME)/.cache/mainrun

.PHONY: venv test run report bench clean-smoke

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m mainrun bench
