# Two commands set up everything on a fresh machine:
#   make train   -> trains LeNet-5 on Fashion-MNIST (real data, CPU) and prints test accuracy
#   make test    -> runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
WORKDIR ?= runs/lenet5_fashion_mnist
PYTEST_ARGS ?=

.PHONY: venv test train fashion_mnist faults bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Offline source of real data: Debian's dataset-fashion-mnist package.
fashion_mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Installing dataset-fashion-mnist (Debian package)"; \
	  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	fi

train: $(STAMP) fashion_mnist
	$(PY) launch.py --config=experiments/lenet5_fashion_mnist.py --workdir=$(WORKDIR)

faults: $(STAMP)
	$(PY) -m cnn_jax.faults --full

bench: $(STAMP)
	bash benchmarks/compare.sh

clean:
	rm -rf $(VENV) .pytest_cache
