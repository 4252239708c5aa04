"""The lab, end to end: real containers booted with systemd, reached by Ansible over SSH."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from docker.types import IPAMConfig, IPAMPool

from deploykit import lab
from deploykit.errors import LabError
from deploykit.project import project_root

ROOT = project_root()

pytestmark = pytest.mark.e2e

DEPLOYKIT = [sys.executable, "-m", "deploykit"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_lab_up_writes_the_default_topology(lab_up: lab.LabUpResult) -> None:
    inventory = yaml.safe_load(lab_up.inventory.read_text())
    groups = inventory["all"]["children"]
    assert sorted(groups) == ["app", "cache", "docstore", "lb", "queue", "worker"]
    assert sorted(groups["app"]["hosts"]) == ["app1", "app2", "app3"]
    assert {h.name for h in lab_up.hosts} == {
        "lb1",
        "app1",
        "app2",
        "app3",
        "worker1",
        "cache1",
        "db1",
        "queue1",
    }
    assert all(h.state == "running" and h.ssh_up for h in lab_up.hosts)


def test_lab_up_twice_changes_nothing(lab_up: lab.LabUpResult) -> None:
    before = lab_up.inventory.read_text()
    proc = run(*DEPLOYKIT, "lab", "up", "--json")
    again = json.loads(proc.stdout)
    assert again["changed"] is False
    assert again["created"] == []
    assert lab_up.inventory.read_text() == before


def test_ansible_reaches_every_host_over_ssh(lab_up: lab.LabUpResult) -> None:
    # From the repository root with no flags: ansible.cfg points at the lab's inventory.
    proc = run("ansible", "all", "-m", "ansible.builtin.ping")
    for host in lab_up.hosts:
        assert f"{host.name} | SUCCESS" in proc.stdout
    # It really is SSH, with the host keys checked against the known_hosts the lab wrote.
    facts = run("ansible", "lb1", "-m", "ansible.builtin.setup", "-a", "filter=ansible_env")
    assert "SSH_CONNECTION" in facts.stdout


def test_each_host_has_its_own_ssh_host_key(lab_up: lab.LabUpResult) -> None:
    known_hosts = (lab_up.inventory.parent / ".ssh" / "known_hosts").read_text().splitlines()
    keys = [line.split()[2] for line in known_hosts]
    assert len(keys) == len(lab_up.hosts)
    assert len(set(keys)) == len(keys)


def test_the_lab_inventory_passes_check(lab_up: lab.LabUpResult) -> None:
    proc = run(*DEPLOYKIT, "check", "-i", str(lab_up.inventory))
    assert proc.returncode == 0


def test_lab_status_lists_every_host(lab_up: lab.LabUpResult) -> None:
    proc = run(*DEPLOYKIT, "lab", "status", "--json")
    hosts = {h["name"]: h for h in json.loads(proc.stdout)}
    assert set(hosts) == {h.name for h in lab_up.hosts}
    assert all(h["ssh_up"] for h in hosts.values())


def test_a_taken_subnet_is_refused_before_anything_changes(lab_up: lab.LabUpResult) -> None:
    client = lab.docker_client()
    squatter = client.networks.create(
        "deploykit-test-squatter", ipam=IPAMConfig(pool_configs=[IPAMPool(subnet="172.30.98.0/24")])
    )
    try:
        with pytest.raises(LabError) as raised:
            lab.up(lab.LabSpec(subnet="172.30.98.0/24"), root=ROOT, log=lambda _: None)
        assert str(raised.value).splitlines()[0] == (
            "subnet 172.30.98.0/24 is already taken: Docker network 'deploykit-test-squatter' "
            "uses 172.30.98.0/24"
        )
    finally:
        squatter.remove()
    # The lab that was up is untouched.
    assert all(h.ssh_up for h in lab.status(root=ROOT))


@pytest.mark.lab_teardown
def test_lab_down_leaves_nothing_behind(lab_up: lab.LabUpResult) -> None:
    run(*DEPLOYKIT, "lab", "down")
    client = lab.docker_client()
    assert client.containers.list(all=True, filters={"label": lab.LABEL}) == []
    assert [n.name for n in client.networks.list(names=[lab.NETWORK_NAME])] == []
    assert not lab_up.inventory.exists()
    assert not (lab_up.inventory.parent / ".ssh").exists()
    # A second `down` is safe and says there was nothing to do.
    again = run(*DEPLOYKIT, "lab", "down")
    assert "nothing to remove" in again.stderr
