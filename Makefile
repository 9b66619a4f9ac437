# One command each, from a fresh clone: `make quickstart` (set up + quickstart benchmark) and
# `make test` (set up + lint + tests). Set-up creates .venv when missing and installs Debian's
# dataset-fashion-mnist when it is absent and apt is usable.
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup fashion-mnist quickstart test lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed fashion-mnist

fashion-mnist:
	@test -f $(FMNIST) || { command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo "Fashion-MNIST not installed: run 'apt-get install dataset-fashion-mnist' or set dataset.root"

quickstart: setup
	$(BIN)/lt-bench run experiment=quickstart

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
