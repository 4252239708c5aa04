"""The molecule scenarios on a pool: one at a time beside the other tests, two at a time after.

Each scenario (one per role) is `molecule test -s SCENARIO`: create, converge, idempotence,
testinfra verify, destroy, on containers and a network of its own (fixed subnets 172.30.1xx.0/25,
never the lab's). The pool starts once pytest has collected the run (conftest.py), before the
first unit test: the unit and e2e tests leave about half of this 2-core machine idle (one process;
the e2e tests wait on deploys, health gates and load at a fixed rate: vmstat during CI,
2026-12-05), and one scenario at a time fills that, at a lower CPU priority. When every other test
has run and test_molecule.py's tests start waiting for their results, the pool widens to JOBS.
The benches run before test_molecule.py's tests, with a scenario beside them (conftest.py orders
them): CI checks what they do; their figures worth quoting come from a quiet machine.

Tried before (2026-12-03): three scenarios beside the e2e tests failed in molecule's own checks
(`ansible-playbook --version` exiting 1). The cause (found 2026-12-05): Ansible refuses to start
when its stdin is non-blocking, and the scenarios shared pytest's stdin with the e2e tests'
processes, one of which left it so. Each scenario now has a stdin of its own (/dev/null). The
scenarios skip molecule's prerun too (`prerun: false`: the collections come with the `ansible`
package, the roles path is set): it only repeated, in every scenario, work nothing needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from deploykit.project import project_root

ROOT = project_root()
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))

# Two scenarios at a time once every other test has run, one beside them (0: none, the pool
# waits for them). DEPLOYKIT_MOLECULE_JOBS=1 for a machine that is already busy.
JOBS = max(1, int(os.environ.get("DEPLOYKIT_MOLECULE_JOBS", "2")))
BESIDE = max(0, min(JOBS, int(os.environ.get("DEPLOYKIT_MOLECULE_BESIDE", "1"))))
# Molecule's Ansible (the controller's side) yields the CPU to the e2e tests' deploys under load.
NICENESS = 10
# The longest first, so that the queues end together (the CI rehearsal of 7bfba99, 2026-12-05).
LONGEST_FIRST = (
    "rabbitmq", "haproxy", "app", "redis", "postgresql", "static", "worker", "mongodb", "common",
    "release", "ledger",
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
            ["nice", "-n", str(NICENESS), str(venv_bin / "molecule"), "test", "-s", scenario],
            env=env,
            cwd=ROOT,
            # A stdin of its own: Ansible refuses to start (exit 1, "requires blocking IO") when a
            # process beside it has left a shared stdin non-blocking, as the e2e tests' ssh does.
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    finally:
        SPANS[scenario] = (started, time.monotonic())


class Gate:
    """How many scenarios may run at once: BESIDE while the other tests run, JOBS once widen() is
    called. Slots go in the order they were asked for: a thread that has just ended a scenario
    does not take the slot again ahead of one that was waiting (the longest-first order holds)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running = 0
        self._tickets = 0  # slots asked for
        self._served = 0  # slots given, in ticket order
        self._changed = threading.Condition()

    def widen(self, limit: int) -> None:
        with self._changed:
            self._limit = max(self._limit, limit)
            self._changed.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._changed:
            ticket = self._tickets
            self._tickets += 1
            self._changed.wait_for(lambda: self._served == ticket and self._running < self._limit)
            self._served += 1
            self._running += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()


class Pool:
    """SCENARIOS, the longest first, each in a slot of the gate; each test waits for its own."""

    def __init__(self, scenarios: set[str], reports: Path) -> None:
        order = sorted(
            scenarios, key=lambda s: LONGEST_FIRST.index(s) if s in LONGEST_FIRST else 99
        )
        self.reports = reports
        self.gate = Gate(BESIDE)
        self._executor = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="molecule")
        self.runs: Runs = {
            name: self._executor.submit(self._run, name, reports / f"{name}.xml") for name in order
        }

    def _run(self, scenario: str, report: Path) -> subprocess.CompletedProcess[str]:
        with self.gate.slot():
            return run_scenario(scenario, report)

    def all_slots(self) -> Runs:
        """JOBS at a time from now on (the other e2e tests have run); the runs."""
        self.gate.widen(JOBS)
        return self.runs

    def shutdown(self) -> None:
        self.gate.widen(JOBS)
        self._executor.shutdown(wait=True, cancel_futures=True)


def summary_lines() -> list[str]:
    """Each scenario's wall time, and the span from the first start to the last end."""
    if not SPANS:
        return []
    lines = [f"{name:<12} {end - begin:7.0f} s" for name, (begin, end) in sorted(SPANS.items())]
    first = min(begin for begin, _ in SPANS.values())
    last = max(end for _, end in SPANS.values())
    lines.append(
        f"{'all (span)':<12} {last - first:7.0f} s  "
        f"({BESIDE} at a time beside the other tests, then {JOBS})"
    )
    return lines


def span_seconds() -> float:
    if not SPANS:
        return 0.0
    return max(end for _, end in SPANS.values()) - min(begin for begin, _ in SPANS.values())
