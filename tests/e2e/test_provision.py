"""site.yml through deploykit's runner, over SSH, on the shared lab."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, provision

from deploykit import lab

pytestmark = pytest.mark.e2e


def test_site_converges_and_a_second_run_changes_nothing(
    lab_up: lab.LabUpResult, site_converged: dict[str, object]
) -> None:
    assert site_converged["status"] == "successful", site_converged["failures"]
    hosts = site_converged["hosts"]
    assert isinstance(hosts, dict)
    assert set(hosts) == {h.name for h in lab_up.hosts}
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in hosts.values())

    second = provision()
    assert second["status"] == "successful", second["failures"]
    assert isinstance(second["hosts"], dict)
    changed = {name: h["changed"] for name, h in second["hosts"].items() if h["changed"]}
    assert changed == {}, f"the second run changed something: {changed}"


def test_check_mode_on_the_converged_lab_reports_no_change(site_converged: object) -> None:
    proc = subprocess.run(
        ["ansible-playbook", "site.yml", "--check", "--diff"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    recap = proc.stdout[proc.stdout.rindex("PLAY RECAP") :].splitlines()[1:]
    hosts = [line for line in recap if "ok=" in line]
    assert hosts
    assert all("changed=0" in line for line in hosts), "\n".join(hosts)
