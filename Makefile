# One entry point for a fresh machine:
#   make repro   set up .venv and reproduce the whole study (dvc repro)
#   make test    set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := false
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup repro test lint ui clean-venv

setup: $(STAMP)

# Install order is fixed: the CPU torch wheel first (so nothing pulls a CUDA build), then the
# project, then GUI OpenCV reinstalled last, because albumentations drags in
# opencv-python-headless and both packages write the same cv2/ folder.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip uninstall -q -y opencv-python-headless
	$(BIN)/pip install -q --force-reinstall --no-deps opencv-python==5.0.0.93
	$(BIN)/python -c "import cv2, torch, retinaface, mlflow, great_expectations; print('cv2', cv2.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

repro: setup
	$(BIN)/dvc config core.analytics false
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

test: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

ui: setup
	$(BIN)/ferlab ui

clean-venv:
	rm -rf $(VENV)
