"""site.yml through deploykit's runner, over SSH, on the shared lab."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, LabShell, provision

from deploykit import lab

pytestmark = pytest.mark.e2e


def _changed(recap: dict[str, object]) -> dict[str, int]:
    assert recap["status"] == "successful", recap["failures"]
    hosts = recap["hosts"]
    assert isinstance(hosts, dict)
    return {name: h["changed"] for name, h in hosts.items() if h["changed"]}


def _tasks(recap: dict[str, object]) -> dict[str, int]:
    """Each host's tasks that ran (ok or changed)."""
    hosts = recap["hosts"]
    assert isinstance(hosts, dict)
    return {name: h["ok"] for name, h in hosts.items()}


#: What a run that converges no role still runs on a host: the preflight's checks, the gathering
#: and the question to each of its roles (module_utils/converge.py). A host that converges one
#: role in full runs over twenty more.
MAX_TASKS_WITHOUT_A_CONVERGE = 12
HAND_CHANGED = {"lb1", "app1", "cache1"}


def test_site_converges_a_second_run_changes_nothing_and_a_third_converges_no_role(
    lab_up: lab.LabUpResult, site_converged: dict[str, object]
) -> None:
    assert site_converged["status"] == "successful", site_converged["failures"]
    hosts = site_converged["hosts"]
    assert isinstance(hosts, dict)
    assert set(hosts) == {h.name for h in lab_up.hosts}
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in hosts.values())

    # In full (every role's every task, whatever the records): the roles themselves are idempotent.
    full = provision("--full")
    assert _changed(full) == {}, f"the second run changed something: {_changed(full)}"
    # Nothing changed since: no role converges, each host only answers whether it has them.
    skipped = provision()
    assert _changed(skipped) == {}
    ran, ran_in_full = _tasks(skipped), _tasks(full)
    assert all(ran[h] <= MAX_TASKS_WITHOUT_A_CONVERGE < ran_in_full[h] for h in ran), (
        ran,
        ran_in_full,
    )


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


def test_a_run_repairs_what_changed_by_hand_on_a_host_and_nothing_else(
    site_converged: dict[str, object], lab_shell: LabShell
) -> None:
    # A file's content, a file's mode, a stopped service, on three hosts.
    mode = lab_shell.run("app1", "stat -c %a /etc/nftables.conf")
    lab_shell.run("lb1", "echo '# changed by hand' >> /etc/haproxy/haproxy.cfg")
    lab_shell.run("app1", "chmod 0666 /etc/nftables.conf")
    lab_shell.run("cache1", "systemctl stop redis-server.service")
    try:
        repaired = provision()
    finally:
        lab_shell.run("cache1", "systemctl start redis-server.service")
    assert set(_changed(repaired)) == HAND_CHANGED, repaired["hosts"]
    assert "changed by hand" not in lab_shell.run("lb1", "cat /etc/haproxy/haproxy.cfg")
    assert lab_shell.run("app1", "stat -c %a /etc/nftables.conf") == mode != "666"
    assert lab_shell.run("cache1", "systemctl is-active redis-server.service") == "active"
    # The other hosts converged nothing; the next run, nothing anywhere.
    ran = _tasks(repaired)
    assert all(ran[h] <= MAX_TASKS_WITHOUT_A_CONVERGE for h in ran if h not in HAND_CHANGED), ran
    again = provision()
    assert _changed(again) == {}
    assert all(n <= MAX_TASKS_WITHOUT_A_CONVERGE for n in _tasks(again).values()), again["hosts"]
