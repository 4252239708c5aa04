"""Each molecule scenario's tests/ folder links the role tests it runs from tests/infra, and every
helper module of tests/infra those tests import (molecule's verifier runs pytest in that folder:
a helper that is not linked there fails the scenario only at its verify, minutes in)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deploykit.project import project_root

ROOT = project_root()
INFRA = ROOT / "tests" / "infra"
SCENARIO_TESTS = sorted(p.parent / "tests" for p in (ROOT / "molecule").glob("*/molecule.yml"))


def infra_imports(module: Path) -> set[str]:
    """The modules of tests/infra that MODULE imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if (INFRA / f"{name}.py").is_file()}


@pytest.mark.parametrize("tests", SCENARIO_TESTS, ids=lambda p: p.parent.name)
def test_a_scenarios_tests_link_every_infra_module_they_import(tests: Path) -> None:
    linked = {p.stem for p in tests.glob("*.py")}
    assert linked, f"{tests} holds no test module"
    for module in tests.glob("*.py"):
        assert module.is_symlink(), f"{module}: the role tests live in tests/infra, linked here"
        assert module.resolve().parent == INFRA, f"{module} links outside tests/infra"
        missing = infra_imports(module.resolve()) - linked
        assert not missing, f"{tests}: {module.name} imports {sorted(missing)}, not linked here"


def test_every_infra_module_is_run_or_imported_by_a_scenario() -> None:
    used = {p.resolve().name for tests in SCENARIO_TESTS for p in tests.glob("*.py")}
    assert {p.name for p in INFRA.glob("*.py")} - used == set()
