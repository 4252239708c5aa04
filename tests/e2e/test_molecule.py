"""Every molecule scenario (one per role; HOSTED_ROLES are in another's): create, converge,
idempotence, testinfra verify, destroy.

Run from pytest so that `make test` has one runner and one closing line; each scenario is a test.
The scenarios run on a pool (molecule_runs.py): one at a time beside the other e2e tests, two at
a time once those have run; these tests wait for their results after every other e2e test.
Each verify writes a JUnit report; a scenario passes only when every test of it passed or was
skipped with a reason ALLOWED_SKIPS (verify_skips.py) lists, and the final summary shows each
scenario's accounting (passed, skipped, and why each skip is allowed).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from molecule_runs import ROOT, SCENARIOS, Runs
from verify_skips import VERIFY_ACCOUNTING, account

pytestmark = pytest.mark.molecule


#: Roles converged and verified in another role's scenario (and the test file that verifies them
#: there), because they need its hosts: the bake publishes on the static scenario's balancer,
#: keepalived needs the haproxy scenario's two balancers.
HOSTED_ROLES = {
    "bake": ("static", "test_static_bake.py"),
    "keepalived": ("haproxy", "test_keepalived.py"),
}


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    assert roles, "no roles found"
    scenario_of = {role: scenario for role, (scenario, _) in HOSTED_ROLES.items()}
    missing = [role for role in roles if scenario_of.get(role, role) not in SCENARIOS]
    assert missing == [], f"roles without a molecule scenario: {missing}"
    for role, (scenario, tests) in HOSTED_ROLES.items():
        converge = (ROOT / "molecule" / scenario / "converge.yml").read_text(encoding="utf-8")
        assert re.search(rf"(name|role): {role}\n", converge), (
            f"{scenario} does not converge {role}"
        )
        assert (ROOT / "molecule" / scenario / "tests" / tests).is_file(), (role, tests)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(
    scenario: str,
    molecule_runs: Runs,
    molecule_reports: Path,
    request: pytest.FixtureRequest,
) -> None:
    proc = molecule_runs[scenario].result()
    accounting = account(scenario, molecule_reports / f"{scenario}.xml")
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
