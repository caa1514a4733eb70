# The commands the README names. Each target installs first (a no-op when nothing changed).
PYTHON ?= python3
# Where `make serve` listens: `make serve PORT=8001 HOST=0.0.0.0`.
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install lock serve test lint bench

install: $(VENV)/.installed

# The exact versions of requirements.lock (made by `make lock`, every file's sha256 checked),
# then the client (./client, the `descent` command) and the service themselves, editable.
# Reinstalled whenever the lock or a pyproject.toml changes. The Dockerfile does the same.
$(VENV)/.installed: requirements.lock pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.lock
	$(BIN)/pip install --no-deps -e ./client -e .
	@# A venv made before the client was split off: removing the service's old version
	@# removed its `descent` script, which is now the client's.
	test -x $(BIN)/descent || $(BIN)/pip install --no-deps --force-reinstall -e ./client
	touch $@

# requirements.lock anew from requirements.in (the client and the service with its test
# extra) at today's newest versions within pyproject.toml's ranges, with every file's hash;
# the Docker images' requirements-api.lock (no torch) and requirements-worker.lock from it.
# About 12 minutes: pip-compile downloads every platform's torch wheel to hash it.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q 'pip-tools>=7.4'
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --no-allow-unsafe \
		--unsafe-package descent --unsafe-package descent-client \
		--no-emit-index-url --no-emit-find-links -o requirements.lock requirements.in
	$(BIN)/python .ci/image_locks.py requirements.lock api > requirements-api.lock
	$(BIN)/python .ci/image_locks.py requirements.lock worker > requirements-worker.lock

serve: install
	$(BIN)/descent serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core worker store descent api client/descent_client

bench: install
	$(BIN)/python -m benchmarks
