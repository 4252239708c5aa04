"""Every molecule scenario (one per role): create, converge, idempotence, testinfra verify, destroy.

Run from pytest so that `make test` has one runner and one closing line; each scenario is a test.
Each verify writes a JUnit report; a scenario passes only when every test of it passed or was
skipped with a reason ALLOWED_SKIPS (verify_skips.py) lists, and the final summary shows each
scenario's accounting (passed, skipped, and why each skip is allowed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from verify_skips import VERIFY_ACCOUNTING, account

from deploykit.project import project_root

ROOT = project_root()
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))

pytestmark = pytest.mark.molecule


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    assert roles, "no roles found"
    missing = [role for role in roles if role not in SCENARIOS]
    assert missing == [], f"roles without a molecule scenario: {missing}"


# Scenarios run two at a time: each is mostly waiting (apt, pip, systemd, SSH), and every one has
# its own containers, network and molecule state, so they do not meet. Together they are about
# half of `make test`; one at a time they took 24 min of it. DEPLOYKIT_MOLECULE_JOBS=1 for a
# machine that is already busy.
JOBS = max(1, int(os.environ.get("DEPLOYKIT_MOLECULE_JOBS", "2")))
# The longest first, so that the two queues end together.
LONGEST_FIRST = (
    "app", "rabbitmq", "haproxy", "redis", "worker", "postgresql", "mongodb", "static", "common",
    "release",
)  # fmt: skip


def run_scenario(scenario: str, report: Path) -> subprocess.CompletedProcess[str]:
    """`molecule test -s SCENARIO`; its verify's pytest writes a JUnit report to REPORT."""
    venv_bin = Path(sys.executable).parent
    # molecule looks up ansible-config and ansible-playbook on PATH: put the venv's first.
    # The verifier's pytest inherits the environment: PYTEST_ADDOPTS reaches it (and only it).
    addopts = f"{os.environ.get('PYTEST_ADDOPTS', '')} --junitxml={report}".strip()
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTEST_ADDOPTS": addopts,
    }
    return subprocess.run(
        [str(venv_bin / "molecule"), "test", "-s", scenario],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each scenario's verify writes its JUnit report (SCENARIO.xml)."""
    return tmp_path_factory.mktemp("molecule-verify")


@pytest.fixture(scope="module")
def scenario_runs(
    request: pytest.FixtureRequest, lab_image: str, reports: Path
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """The selected scenarios (-k applies) started on a pool of JOBS; each test waits for its
    own. The lab image is built before any of them starts."""
    del lab_image
    selected = {
        item.callspec.params["scenario"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_molecule_scenario"
    }
    order = sorted(selected, key=lambda s: LONGEST_FIRST.index(s) if s in LONGEST_FIRST else 99)
    pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="molecule")
    try:
        yield {
            scenario: pool.submit(run_scenario, scenario, reports / f"{scenario}.xml")
            for scenario in order
        }
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(
    scenario: str,
    scenario_runs: dict[str, Future[subprocess.CompletedProcess[str]]],
    reports: Path,
    request: pytest.FixtureRequest,
) -> None:
    proc = scenario_runs[scenario].result()
    accounting = account(scenario, reports / f"{scenario}.xml")
    # Shown in the run's final summary (conftest.py), passed or not.
    request.config.stash.setdefault(VERIFY_ACCOUNTING, []).append(accounting)
    if proc.returncode != 0:
        pytest.fail(f"molecule test -s {scenario} exited {proc.returncode}:\n{why(proc)}")
    if accounting.problems:
        lines = [*accounting.problems, "--- the accounting ---", *accounting.summary()]
        pytest.fail("\n".join(lines), pytrace=False)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def why(proc: subprocess.CompletedProcess[str]) -> str:
    """What to read of a failed scenario: the failing task or test (molecule's destroy step runs
    after it and would fill a plain tail), then the last lines."""
    lines = [ANSI.sub("", line) for line in (proc.stdout + proc.stderr).splitlines()]
    marks = ("fatal:", "FAILED ", "Error", "assert ", "E   ", "short test summary", "failed=")
    wanted = [i for i, line in enumerate(lines) if any(mark in line for mark in marks)]
    picked: list[str] = []
    for index in wanted[:40]:
        picked.extend(lines[max(0, index - 2) : index + 3])
    return "\n".join([*picked[:300], "--- last lines ---", *lines[-40:]])
