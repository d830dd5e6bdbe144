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

.PHONY: setup repro test lint ui compare clean-venv

setup: $(STAMP)

# Install order is fixed: torch first, then the project, then GUI OpenCV reinstalled last,
# because albumentations drags in opencv-python-headless and both write the same cv2/ folder.
# Which torch build: `pip install torch==2.13.0` takes whatever pip's configured sources hold.
# On a machine whose pip config lists a local CPU wheel (find-links), that is the CPU build; from
# plain PyPI on Linux it is the CUDA build (several GB). TORCH_INDEX chooses explicitly:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu      # CPU build, any machine
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128    # a CUDA build
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

# The experiments side by side with only the numbers people compare (dvc exp show alone lists
# every param and metric: hundreds of columns).
COMPARE_KEEP := Experiment|Created|^seed$$|train\.(epochs|lr|batch_size|targets|ema_decay)|model\.name|^fast\.|(study|fast)\.(reference_private|clean_test|test)\.(accuracy|balanced_accuracy)
compare: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc exp show --drop '.*' --keep '$(COMPARE_KEEP)' --md

clean-venv:
	rm -rf $(VENV)
