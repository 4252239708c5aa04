"""Every molecule scenario (one per role): create, converge, idempotence, testinfra verify, destroy.

Run from pytest so that `make test` has one runner and one closing line; each scenario is a test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.project import project_root

ROOT = project_root()
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))

pytestmark = pytest.mark.molecule


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    assert roles, "no roles found"
    missing = [role for role in roles if role not in SCENARIOS]
    assert missing == [], f"roles without a molecule scenario: {missing}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, lab_image: str) -> None:
    venv_bin = Path(sys.executable).parent
    # molecule looks up ansible-config and ansible-playbook on PATH: put the venv's first.
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(venv_bin / "molecule"), "test", "-s", scenario],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"molecule test -s {scenario} exited {proc.returncode}:\n{why(proc)}")


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
