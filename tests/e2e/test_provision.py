"""site.yml through deploykit's runner, over SSH, on the shared lab."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploykit import lab
from deploykit.project import project_root

ROOT = project_root()

pytestmark = pytest.mark.e2e


def provision() -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", "provision", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no JSON output; stderr:\n{proc.stderr[-3000:]}"
    recap = lines[-1]
    assert recap["event"] == "recap"
    assert proc.returncode == (0 if recap["status"] == "successful" else 1)
    return recap


def test_site_converges_and_a_second_run_changes_nothing(lab_up: lab.LabUpResult) -> None:
    first = provision()
    assert first["status"] == "successful", first["failures"]
    hosts = first["hosts"]
    assert set(hosts) == {h.name for h in lab_up.hosts}
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in hosts.values())

    second = provision()
    assert second["status"] == "successful", second["failures"]
    changed = {name: h["changed"] for name, h in second["hosts"].items() if h["changed"]}
    assert changed == {}, f"the second run changed something: {changed}"


def test_check_mode_on_the_converged_lab_reports_no_change(lab_up: lab.LabUpResult) -> None:
    proc = subprocess.run(
        ["ansible-playbook", "site.yml", "--check", "--diff"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    recap = proc.stdout[proc.stdout.rindex("PLAY RECAP") :]
    assert "changed=0" in recap
    assert all("changed=0" in line for line in recap.splitlines()[1:] if "ok=" in line)
