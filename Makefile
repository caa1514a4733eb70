# The commands the README names. Each target installs first (a no-op when nothing changed).
PYTHON ?= python3
# Where `make serve` listens: `make serve PORT=8001 HOST=0.0.0.0`.
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install serve test lint bench

install: $(VENV)/.installed

# Reinstalled whenever pyproject.toml changes; the Dockerfile installs the same dependencies,
# then the code with `pip install --no-deps -e ./client -e .`. The client (./client, the
# `descent` command) is installed with the service, which depends on it.
$(VENV)/.installed: pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ./client -e '.[test]'
	@# A venv made before the client was split off: removing the service's old version
	@# removed its `descent` script, which is now the client's.
	test -x $(BIN)/descent || $(BIN)/pip install --no-deps --force-reinstall -e ./client
	touch $@

serve: install
	$(BIN)/descent serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy core

bench: install
	$(BIN)/python -m benchmarks
