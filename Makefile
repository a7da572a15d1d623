# The two commands a newcomer needs: `make demo` (set-up + the whole notebook, headless) and
# `make test` (set-up + the test suite). Everything installs into .venv; artefacts go to outputs/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lab install app benchmark clean-venv

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed requirements-test.txt
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

install: $(BIN)/.installed

$(BIN)/.installed-app: $(BIN)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet --editable '.[app]'
	touch $@

# The demo uses ImageNet weights when they can be had and random init otherwise, and says which
# in large letters (your own runs always name their weights). Its head learns at 3e-3 instead of
# the default 1e-4: random-init features need larger steps, and epochs on cached features cost
# milliseconds, so early stopping, not the budget, ends training.
demo: $(BIN)/.installed
	$(BIN)/python -m deepfake_detector notebook --parameter WEIGHTS '"imagenet-or-none"' \
		--parameter LR 3e-3 --parameter EPOCHS 200

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -ra

# The web app on the synthetic demo run (trained first, about a minute; reused after that):
# http://127.0.0.1:8501. With your own run: .venv/bin/python -m deepfake_detector app --run RUN
app: $(BIN)/.installed-app
	$(BIN)/python -m deepfake_detector app --demo

lab: $(BIN)/.installed
	$(BIN)/jupyter lab notebooks/

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/gradcam_speed.py
	$(BIN)/python benchmarks/app_speed.py

clean-venv:
	rm -rf $(VENV)
