# The two commands a fresh machine needs: `make up` (hub + local spoke) and `make test`.
# Everything goes into a project virtualenv, .venv (PYTHON= picks the interpreter it is made
# from); put .venv/bin on your PATH to get the `hub` and `spoke` commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin

.PHONY: install install-test up down test lint bench

install:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/install-deps.sh

install-test:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/install-deps.sh --test

up: install
	@$(BIN)/hub up

down:
	@$(BIN)/hub down

test: install-test
	@echo "==> ruff, mypy, then the test suite (real Docker, real wss)"
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q -ra

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	PATH="$(BIN):$$PATH" $(BIN)/python benchmarks/exec_overhead.py
