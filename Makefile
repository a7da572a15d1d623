# The two commands a newcomer needs: `make demo` (set-up + the whole notebook, headless) and
# `make test` (set-up + the test suite). Everything installs into .venv; artefacts go to outputs/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lab install app benchmark clean-venv

# pyproject.toml declares the dependencies (with ranges) and the extras; constraints.txt pins the
# exact versions this project is tested with.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --constraint constraints.txt

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) --editable ".[notebook]"
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP_INSTALL) --editable ".[test]"
	touch $@

$(BIN)/.installed-app: $(BIN)/.installed
	$(PIP_INSTALL) --editable ".[app]"
	touch $@

install: $(BIN)/.installed

# The demo is Run All on the notebook's defaults, the same notebook `make lab` opens, so the two
# cannot disagree. WEIGHTS = "imagenet-or-none": ImageNet weights when they can be had, random
# init otherwise, said in large letters (your own runs always name their weights). The head's
# default recipe converges on either (early stopping, not the epoch budget, ends training). It
# prints a line per notebook section as it runs, then a summary read from the run's files.
demo: $(BIN)/.installed
	$(BIN)/python -m deepfake_detector notebook

# --durations=15: the 15 slowest tests, so that a slow new one shows up where it is added.
# Two workers (pytest-xdist), one per core of a laptop or CI's 2-core machine; each test file
# runs whole in one worker (--dist loadfile), so a file's shared fixtures are built once.
test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -ra --durations=15 -n 2 --dist loadfile

# The web app on the synthetic demo run (trained first, about a minute; reused after that):
# http://127.0.0.1:8501. With your own run: .venv/bin/python -m deepfake_detector app --run RUN
app: $(BIN)/.installed-app
	$(BIN)/python -m deepfake_detector app --demo

# JupyterLab with ipywidgets: the threshold slider, image browser and upload box work live.
# jupyter_lab_config.py gives its kernels the headless runner's sockets (CurveZMQ-encrypted, or
# IPC files only you can open where pyzmq lacks CurveZMQ), so ipykernel has no cause to warn.
# In a git clone it first installs nbstripout as the git filter that .gitattributes names (git
# config of this clone only): autosaved outputs and execution counts never reach `git diff` or
# a commit; cell ids are kept. Undo: .venv/bin/nbstripout --uninstall
lab: $(BIN)/.installed
	@if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$$(pwd -P)" ]; then \
		PY="$$(cd $(BIN) && pwd -P)/python"; \
		$(BIN)/nbstripout --install --attributes .gitattributes && \
		git config filter.nbstripout.clean "\"$$PY\" -m nbstripout --keep-id" && \
		git config diff.ipynb.textconv "\"$$PY\" -m nbstripout --keep-id -t" || \
		echo "note: nbstripout's git filter was not installed: commit the notebook without outputs by hand"; \
	fi
	$(BIN)/jupyter lab --config=jupyter_lab_config.py notebooks/deepfake_detector.ipynb

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/gradcam_speed.py
	$(BIN)/python benchmarks/app_speed.py

clean-venv:
	rm -rf $(VENV)
