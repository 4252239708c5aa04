"""End-to-end fixtures: one lab per test run, shared by every e2e test, removed at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit import lab
from deploykit.errors import LabError
from deploykit.project import project_root

ROOT = project_root(Path(__file__).parent)

# The tests call ansible, ansible-playbook and molecule as a user would: from the virtualenv that
# runs pytest, whether or not it is activated.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _require_engine() -> None:
    """Skip (locally) or fail (in CI) when no Docker engine answers, naming what is missing."""
    try:
        lab.docker_client()
    except LabError as error:
        reason = f"needs a Docker engine: {error}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_image() -> str:
    """The lab's base image (built offline on first use); molecule scenarios run on it too."""
    _require_engine()
    return lab.ensure_image(log=print)


@pytest.fixture(scope="session")
def lab_up(lab_image: str) -> Iterator[lab.LabUpResult]:
    """The default lab (full profile), created once per run; `lab down` runs at the end even
    when a test fails, so no run leaves containers behind."""
    result = lab.up(lab.LabSpec(), root=ROOT, log=print)
    yield result
    lab.down(root=ROOT, log=print)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `lab_teardown` tear the shared lab down: they run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_teardown: removes the shared lab; runs last")
