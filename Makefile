# deploykit's two set-up commands (see README.md):
#   make up     from a fresh clone to the lab running the stack
#   make test   every test: lint, unit, molecule scenarios and end-to-end on the lab
# Both create their own virtualenv (.venv) and install Docker's engine when it is missing. The engine
# comes first: scripts/ensure-docker-engine also installs python3-venv, which a fresh Debian 12 lacks.

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

SHOP_VENV ?= .venv-shop

# Times a stage when DEPLOYKIT_STAGE_TIMES names a file (.ci/run prints them at the end); otherwise
# it only runs the command.
STAGE := scripts/stage-time

.PHONY: up down test lint unit e2e engine venv clean shop-test

venv: $(VENV)/.installed

# uv (a dependency: deploykit build uses it) installs the same versions as pip in seconds. It does
# not read pip's configuration: where only pip can reach the packages (an index set in pip.conf),
# pip installs them instead. Unlike pip, uv compiles no bytecode, and where PYTHONDONTWRITEBYTECODE
# is set (it is on the CI machine) Python then compiles ansible-core again in every process
# (ansible-playbook --version: 2.5 s, 0.8 s with it). So compileall does it once, on both cores,
# leaving out the collections' modules and tests: the controller never imports those (a module
# travels to the hosts as source). `make venv`, 2026-12-06: 37 s and 53 core-seconds; pip: 62 s, 54.
VENV_NOT_COMPILED := /ansible_collections/[^/]+/[^/]+/(plugins/modules|tests)/
$(VENV)/.installed: pyproject.toml
	$(STAGE) venv $(PYTHON) -m venv $(VENV)
	$(STAGE) venv $(BIN)/pip install --quiet 'uv>=0.4'
	$(STAGE) venv $(BIN)/uv pip install --quiet --python $(BIN)/python --upgrade-package pip pip -e '.[test]' \
	  || $(STAGE) venv $(BIN)/pip install --quiet --upgrade pip -e '.[test]'
	$(STAGE) venv $(BIN)/python -m compileall -q -j 0 -x '$(VENV_NOT_COMPILED)' $(VENV)/lib
	touch $@

engine:
	$(STAGE) engine scripts/ensure-docker-engine

up: engine venv
	$(BIN)/deploykit up

down: venv
	$(BIN)/deploykit down

# scripts/role-docs is Python without a .py suffix: ruff checks it when it is named.
lint: venv
	$(STAGE) lint $(BIN)/ruff check src tests bench examples scripts/role-docs molecule/resources
	$(STAGE) lint $(BIN)/ruff format --check src tests bench examples scripts/role-docs molecule/resources
	$(STAGE) lint $(BIN)/mypy
	$(STAGE) lint $(BIN)/yamllint --strict .
	$(STAGE) lint $(BIN)/ansible-lint

unit: venv
	$(STAGE) unit $(BIN)/pytest tests/unit

e2e: engine venv
	$(BIN)/pytest tests/e2e

# The example application's own tests, against real Redis and PostgreSQL on loopback, in a
# virtualenv of its own (its dependencies are the application's, not deploykit's).
$(SHOP_VENV)/.installed: examples/shop/pyproject.toml | $(VENV)/.installed
	$(STAGE) "$(SHOP_STAGE)" $(PYTHON) -m venv --without-pip $(SHOP_VENV)
	$(STAGE) "$(SHOP_STAGE)" $(BIN)/uv pip install --quiet --compile-bytecode --python $(SHOP_VENV)/bin/python -e 'examples/shop[test]' \
	  || $(STAGE) "$(SHOP_STAGE)" $(BIN)/pip --python $(SHOP_VENV)/bin/python install --quiet -e 'examples/shop[test]'
	touch $@

# SHOP_STAGE: the name its time is recorded under (make test runs it beside the other stages:
# scripts/stage-time leaves a stage named "... (beside)" out of the total).
SHOP_STAGE ?= shop-test
shop-test: $(SHOP_VENV)/.installed
	$(STAGE) "$(SHOP_STAGE)" examples/shop/scripts/test-services
	$(STAGE) "$(SHOP_STAGE)" env SHOP_REQUIRE_SERVICES=1 $(SHOP_VENV)/bin/pytest examples/shop

# lint, then pytest (unit tests, molecule scenarios, e2e, benches), with the shop's own tests (and
# their virtualenv) beside them: they mostly wait (a Sentinel failover, processes starting: 12 % of
# the two cores over 80 s in CI), so they cost the run no time there. Their output comes once they
# are done, after pytest's; a failure of either fails the run (scripts/beside).
test: engine venv
	scripts/beside "the shop's own tests" \
	  $(MAKE) --no-print-directory shop-test "SHOP_STAGE=shop-test (beside)" -- \
	  sh -c '$(MAKE) --no-print-directory lint && $(STAGE) pytest $(BIN)/pytest'

clean:
	rm -rf $(VENV) $(SHOP_VENV) .cache .mypy_cache .ruff_cache .pytest_cache
