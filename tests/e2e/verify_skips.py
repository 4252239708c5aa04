"""The skip accounting of a molecule scenario's testinfra run: what ran, what was skipped and why.

test_molecule.py has the verifier's pytest write a JUnit XML report (PYTEST_ADDOPTS=--junitxml=...)
and reads it here. A skipped test passes only when ALLOWED_SKIPS lists it, with a reason; any other
skip fails the scenario, and every allowed skip is printed in the run's final summary with pytest's
own message beside the reason it is allowed. No skip is invisible: molecule's output is captured,
and a scenario that exits 0 used to show none of its skips.
"""

from __future__ import annotations

import fnmatch
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The skips a scenario's verify may have, by "scenario::test name" (fnmatch patterns), each with
# the reason it is acceptable. Keep it short: a skip that is not here fails the scenario.
MONGOD_ABSENT = (
    "MongoDB's packages come from repo.mongodb.org, which this machine cannot reach, so there is "
    "no mongod to run, log in to or restart; everything the role does before the install is "
    "checked by the tests that pass, and these run wherever the repository answers."
)
ALLOWED_SKIPS: dict[str, str] = {
    "mongodb::test_mongod_*": MONGOD_ABSENT,
    "mongodb::test_packages_are_pinned_and_held": MONGOD_ABSENT,
    "mongodb::test_replica_set_has_a_writable_primary": MONGOD_ABSENT,
    "mongodb::test_anonymous_client_is_refused": MONGOD_ABSENT,
    "mongodb::test_wrong_password_is_refused": MONGOD_ABSENT,
    "mongodb::test_admin_logs_in": MONGOD_ABSENT,
    "mongodb::test_app_user_writes_its_database_only": MONGOD_ABSENT,
    "mongodb::test_data_survives_a_restart": MONGOD_ABSENT,
}


@dataclass(frozen=True)
class Outcome:
    """One test of a verify run: its id ("scenario::name"), passed/failed/skipped, pytest's
    message (a skip's reason, a failure's first line)."""

    test_id: str
    outcome: str
    message: str = ""


@dataclass
class Accounting:
    scenario: str
    outcomes: list[Outcome]
    allowed: dict[str, str] = field(default_factory=lambda: dict(ALLOWED_SKIPS))

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def skipped(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "skipped"]

    def reason(self, outcome: Outcome) -> str | None:
        """Why this skip is allowed (ALLOWED_SKIPS' reason), or None: it is not."""
        for pattern, reason in self.allowed.items():
            if fnmatch.fnmatchcase(outcome.test_id, pattern):
                return reason
        return None

    @property
    def unlisted(self) -> list[Outcome]:
        return [o for o in self.skipped if self.reason(o) is None]

    @property
    def problems(self) -> list[str]:
        """Why the scenario's verify does not count as passed (empty: it does)."""
        found = []
        if not self.outcomes:
            found.append(f"{self.scenario}: the verifier's report lists no test: nothing verified")
        found += [
            f"{o.test_id} skipped ({o.message or 'no reason given'}), and ALLOWED_SKIPS in "
            "tests/e2e/verify_skips.py does not list it: make it run, or list it with a reason"
            for o in self.unlisted
        ]
        return found

    def summary(self) -> list[str]:
        """The accounting, for the run's final summary: the counts, then each skip, grouped by
        the reason it is allowed, with pytest's own message."""
        counts = ", ".join(
            f"{self.count(kind)} {kind}"
            for kind in ("passed", "failed", "error", "skipped")
            if self.count(kind) or kind in ("passed", "skipped")
        )
        lines = [f"{self.scenario}: {counts}"]
        groups: dict[str, list[Outcome]] = {}
        for outcome in self.skipped:
            groups.setdefault(self.reason(outcome) or "", []).append(outcome)
        for reason, outcomes in groups.items():
            names = ", ".join(o.test_id.split("::", 1)[1] for o in outcomes)
            head = f"allowed: {reason}" if reason else "NOT ALLOWED (not in ALLOWED_SKIPS)"
            lines.append(f"  {len(outcomes)} skipped, {head}")
            lines.append(f"    tests: {names}")
            for message in sorted({o.message for o in outcomes}):
                lines.append(f"    pytest said: {message or 'no reason given'}")
        return lines


def read_junit(path: Path, scenario: str) -> list[Outcome]:
    """The outcome of every test case of a pytest --junitxml report."""
    root = ET.parse(path).getroot()
    outcomes = []
    for case in root.iter("testcase"):
        test_id = f"{scenario}::{case.get('name', '?')}"
        outcome, message = "passed", ""
        for kind in ("skipped", "failure", "error"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = " ".join((element.get("message") or "").split())
                break
        outcomes.append(Outcome(test_id, outcome, message))
    return outcomes


def account(scenario: str, report: Path, allowed: dict[str, str] | None = None) -> Accounting:
    """The accounting of a scenario's verify run from its JUnit report (missing: no test ran)."""
    outcomes = read_junit(report, scenario) if report.exists() else []
    if allowed is None:
        return Accounting(scenario, outcomes)
    return Accounting(scenario, outcomes, allowed)


# Where test_molecule.py leaves each scenario's accounting for the final summary (conftest.py).
VERIFY_ACCOUNTING = pytest.StashKey[list[Accounting]]()


def terminal_lines(accountings: list[Accounting]) -> list[str]:
    """The summary's section: every scenario's accounting, in the order they finished."""
    lines = []
    for accounting in accountings:
        lines += accounting.summary()
        lines += [f"  {problem}" for problem in accounting.problems]
    return lines
