# The two commands a fresh machine needs: `make up` (hub + local spoke) and `make test`.
PY ?= python3

.PHONY: install up test lint bench

install:
	@bash deploy/install-deps.sh

up: install
	$(PY) -m cli.hub_cli up

test: install
	ruff check .
	mypy
	$(PY) -m pytest -q -ra

lint:
	ruff check .
	mypy

bench: install
	$(PY) benchmarks/exec_overhead.py
