"""The molecule scenarios, two at a time on a pool.

Each scenario (one per role) is `molecule test -s SCENARIO`: create, converge, idempotence,
testinfra verify, destroy, on containers and a network of its own (fixed subnets 172.30.1xx.0/25,
never the lab's). The pool starts when the first of test_molecule.py's tests asks for it, after
every other e2e test (conftest.py orders them): run beside the e2e tests on this 2-core machine
(2026-12-03), three scenarios failed in molecule's own start-up (`ansible-playbook --version` and
`ansible-galaxy collection install` exiting 1) and the run was only 4 minutes shorter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from deploykit.project import project_root

ROOT = project_root()
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))

# Two scenarios at a time: each is mostly waiting (apt, pip, systemd). DEPLOYKIT_MOLECULE_JOBS=1
# for a machine that is already busy.
JOBS = max(1, int(os.environ.get("DEPLOYKIT_MOLECULE_JOBS", "2")))
# The longest first, so that the two queues end together.
LONGEST_FIRST = (
    "app", "rabbitmq", "haproxy", "redis", "worker", "postgresql", "mongodb", "static", "common",
    "release",
)  # fmt: skip
Runs = dict[str, Future[subprocess.CompletedProcess[str]]]
# Each scenario's start and end (time.monotonic()), for the run's summary: the tests' own
# durations are only their wait for a result.
SPANS: dict[str, tuple[float, float]] = {}


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
    started = time.monotonic()
    try:
        return subprocess.run(
            [str(venv_bin / "molecule"), "test", "-s", scenario],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    finally:
        SPANS[scenario] = (started, time.monotonic())


def start(scenarios: set[str], reports: Path) -> tuple[ThreadPoolExecutor, Runs]:
    """SCENARIOS started on a pool of JOBS, the longest first; each test waits for its own."""
    order = sorted(scenarios, key=lambda s: LONGEST_FIRST.index(s) if s in LONGEST_FIRST else 99)
    pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="molecule")
    runs = {name: pool.submit(run_scenario, name, reports / f"{name}.xml") for name in order}
    return pool, runs


def summary_lines() -> list[str]:
    """Each scenario's wall time, and the span from the first start to the last end."""
    if not SPANS:
        return []
    lines = [f"{name:<12} {end - begin:7.0f} s" for name, (begin, end) in sorted(SPANS.items())]
    first = min(begin for begin, _ in SPANS.values())
    last = max(end for _, end in SPANS.values())
    lines.append(f"{'all (span)':<12} {last - first:7.0f} s  ({JOBS} at a time)")
    return lines


def span_seconds() -> float:
    if not SPANS:
        return 0.0
    return max(end for _, end in SPANS.values()) - min(begin for begin, _ in SPANS.values())
