# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv and
# install the package with its pinned dependencies (plus the `parity` reference implementations the
# tests compare against, and the `bench` baselines whose --quick runs the tests make); reinstall
# happens only when setup.py changes.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# 8 simulated CPU devices: the same sharded code paths as a TPU slice.
export XLA_FLAGS := --xla_force_host_platform_device_count=8
export PYTHONHASHSEED := 0

.PHONY: demo test lint install fmnist fmnist_classifier clean

$(STAMP): setup.py pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,parity,bench]'
	touch $(STAMP)

install: $(STAMP)

# Debian's dataset-fashion-mnist: real images with no download at run time (needs root / apt).
fmnist:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "installing dataset-fashion-mnist with apt"; \
	  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null \
	  || echo "WARNING: could not install dataset-fashion-mnist; tests that need it will fail"; \
	fi

# The Fashion-MNIST feature-distance classifier (trained here, never committed; 5 epochs on CPU).
FMNIST_CLF := checkpoints/fmnist_classifier.npz
fmnist_classifier: $(FMNIST_CLF)
$(FMNIST_CLF): | $(STAMP) fmnist
	$(BIN)/python -m experiments.train_fmnist_classifier --out=$(FMNIST_CLF)

demo: $(STAMP)
	$(BIN)/python -m experiments.demo --out demo_out

test: $(STAMP) fmnist
	$(BIN)/python -m pytest -n 2 --durations=15 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
