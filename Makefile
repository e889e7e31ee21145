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

.PHONY: venv lock test train fashion_mnist faults bench clean

venv: $(STAMP)

# Installs exactly requirements.lock, then the package itself (no dependency resolution, no build
# isolation: setuptools comes from the lock too), so every machine gets the same environment.
# Then compiles the oneDNN convolution handlers (cnn_jax/onednn.py) and the Threefry handler
# (cnn_jax/threefry.py); without a C++ compiler it says so and cnn_jax uses XLA's and JAX's own.
$(STAMP): pyproject.toml requirements.lock cnn_jax/native/onednn_conv.cc cnn_jax/native/threefry.cc
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -m cnn_jax.onednn build || echo "WARNING: oneDNN convolutions not built; XLA's are used"
	$(PY) -m cnn_jax.threefry build || echo "WARNING: Threefry handler not built; JAX's is used"
	touch $(STAMP)

# Re-resolves pyproject.toml's ranges into requirements.lock on purpose (needs PyPI).
lock:
	PYTHON=$(PYTHON) bash tools/lock.sh

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
	$(PY) -m tests.faults.campaign --full

bench: $(STAMP)
	bash benchmarks/compare.sh

clean:
	rm -rf $(VENV) .pytest_cache
