# The two commands: `make run` (install, data, notebooks, report) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= full
# Offline corpus beside the checkout; override with MAINRUN_DATA=... or data=hub.
export MAINRUN_DATA ?= $(abspath ../shared/data/hn-stories-2016-2020.parquet)
export MAINRUN_CHECKPOINTS ?= $(HOME)/.cache/mainrun

.PHONY: venv test run report submission bench clean-smoke

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

# Two pytest workers (pytest-xdist), one test file each at a time: the 2 cores, and the smoke pipeline's
# module fixture runs once. TEST_ARGS adds pytest arguments (e.g. TEST_ARGS='-k export').
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile $(TEST_ARGS)

# Training speed of the final configuration on this CPU, in the precision `auto` picks here (fp32 on AVX2-only
# CPUs, bf16 where native): ours vs the original-style step, the matmul rates, the committed run's
# time-to-quality -> results/bench/cpu-<preset>-<precision>.json. BENCH_PRESET=baseline times the 27.2M model.
BENCH_PRESET ?= final
bench: venv
	$(PY) -m mainrun bench --profile full --preset $(BENCH_PRESET) --set device=cpu --reps 5 --ops

# ---- the workbook: notebooks 01-05 headless (papermill), then the report
NOTEBOOKS := 01_baseline 02_optimizer 03_architecture 04_sweeps 05_analysis
# executed copies, with outputs; never edited by hand
NB_OUT ?= results/notebooks/$(PROFILE)
# Smoke models are tiny: one thread is as fast, and it does not fight a long run for the cores.
ifeq ($(PROFILE),smoke)
export OMP_NUM_THREADS ?= 1
endif

# TRAIN=None leaves it to the notebooks (mainrun.config.resolve_train): under quick and smoke they train what
# is missing from the ledger; under full (hours per run on 2 CPU cores) they only read the committed runs and
# say what is missing. TRAIN=True trains them (and resumes unfinished ones); TRAIN=False trains none of them.
# It governs the runs at the notebook's own profile; the proxy studies of notebooks 03-04 (minutes a run)
# always train what is missing.
TRAIN ?= None

run: venv
	@mkdir -p $(NB_OUT)
	@for nb in $(NOTEBOOKS); do \
	  echo "==> [$(PROFILE)] notebooks/$$nb.ipynb -> $(NB_OUT)/$$nb.ipynb"; \
	  $(PY) -m papermill notebooks/$$nb.ipynb $(NB_OUT)/$$nb.ipynb -p profile $(PROFILE) -p train $(TRAIN) -k python3 \
	    --cwd notebooks --log-output --no-progress-bar || { \
	    echo "error: notebooks/$$nb.ipynb failed at the cell named above; the executed copy with its traceback is $(NB_OUT)/$$nb.ipynb"; \
	    exit 1; }; \
	done
	@$(MAKE) --no-print-directory report PROFILE=$(PROFILE)
ifeq ($(PROFILE),full)
	@$(MAKE) --no-print-directory submission
endif

# Render the report from the stored analysis (quarto if installed, else pandoc + typst); never trains.
report: venv
	$(PY) -m mainrun report --profile $(PROFILE)

# The recommended Mainrun submissions (mainrun/export.py: RECOMMENDED) as the original's layout, from the committed
# ledger and the template: results/submission/<name>/ (mainrun/train.py, SUBMISSION.md, Taskfile.yml). Never trains;
# the same bytes on any host (tests/test_export.py checks the committed trees against a regeneration). `make run`
# ends with it under the full profile.
submission: venv
	$(PY) -m mainrun export --recommended

# The smoke ledger is temporary (see mainrun/ledger.py); this forgets it and its executed notebooks.
clean-smoke:
	rm -rf "$${TMPDIR:-/tmp}/mainrun-smoke" results/notebooks/smoke
