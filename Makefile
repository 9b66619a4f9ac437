# One command each, from a fresh clone: `make quickstart` (set up + quickstart benchmark) and
# `make test` (set up + lint + tests). Set-up creates .venv when missing and installs Debian's
# dataset-fashion-mnist when it is absent and apt is usable.
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup fashion-mnist chromium quickstart test test-plugin lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed fashion-mnist chromium

fashion-mnist:
	@test -f $(FMNIST) || { command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo "Fashion-MNIST not installed: run 'apt-get install dataset-fashion-mnist' or set dataset.root"

chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq chromium; } || \
	  echo "Chromium not installed: the HTML report test needs it (apt-get install chromium)"

quickstart: setup
	$(BIN)/lt-bench run experiment=quickstart

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

test-plugin: $(BIN)/.installed
	$(BIN)/python -m pip install -q --no-build-isolation -e examples/plugin_method
	$(BIN)/python -m pytest -q examples/plugin_method/tests

clean:
	rm -rf $(VENV) runs
