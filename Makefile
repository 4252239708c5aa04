# deploykit's two set-up commands (see README.md):
#   make up     from a fresh clone to the lab running the stack
#   make test   every test: lint, unit, molecule scenarios and end-to-end on the lab
# Both create their own virtualenv (.venv) and install Docker's engine when it is missing.

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: up down test lint unit e2e engine venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

engine:
	scripts/ensure-docker-engine

up: venv engine
	$(BIN)/deploykit up

down: venv
	$(BIN)/deploykit down

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint

unit: venv
	$(BIN)/pytest tests/unit

e2e: venv engine
	$(BIN)/pytest tests/e2e

test: venv engine lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
