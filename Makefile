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
# then the code with `pip install --no-deps -e .`.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
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
