# deploykit's two set-up commands (see README.md):
#   make up     from a fresh clone to the lab running the stack
#   make test   every test: lint, unit, molecule scenarios and end-to-end on the lab
# Both create their own virtualenv (.venv) and install Docker's engine when it is missing.

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

SHOP_VENV ?= .venv-shop

.PHONY: up down test lint unit e2e engine venv clean shop-test

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
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint

unit: venv
	$(BIN)/pytest tests/unit

e2e: venv engine
	$(BIN)/pytest tests/e2e

# The example application's own tests, against real Redis and PostgreSQL on loopback, in a
# virtualenv of its own (its dependencies are the application's, not deploykit's).
$(SHOP_VENV)/.installed: examples/shop/pyproject.toml
	$(PYTHON) -m venv $(SHOP_VENV)
	$(SHOP_VENV)/bin/pip install --quiet -e 'examples/shop[test]'
	touch $@

shop-test: $(SHOP_VENV)/.installed
	examples/shop/scripts/test-services
	SHOP_REQUIRE_SERVICES=1 $(SHOP_VENV)/bin/pytest examples/shop

test: venv engine lint shop-test
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(SHOP_VENV) .cache .mypy_cache .ruff_cache .pytest_cache
