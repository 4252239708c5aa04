"""`deploykit exec` on the lab: real SSH to every clone in parallel, exit codes, host keys refused.

Only read-only commands run on the lab's hosts (hostname, test, cat, sleep).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploykit import lab

pytestmark = pytest.mark.e2e


def deploykit_exec(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploykit", "exec", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    document: dict[str, Any] = json.loads(proc.stdout)
    assert set(document) == {"hosts", "failed"}
    for result in document["hosts"].values():
        assert set(result) == {"rc", "stdout", "stderr", "error"}
    return document


def hosts_of(result: lab.LabUpResult, group: str) -> list[str]:
    return [host.name for host in result.hosts if group in host.groups]


def test_each_app_clone_answers_its_own_name(lab_up: lab.LabUpResult) -> None:
    clones = hosts_of(lab_up, "app")
    assert len(clones) >= 2
    proc = deploykit_exec("--json", "app", "--", "hostname")
    document = as_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert list(document["hosts"]) == clones
    for name, result in document["hosts"].items():
        assert result == {"rc": 0, "stdout": f"{name}\n", "stderr": "", "error": None}
    assert document["failed"] == []


def test_people_get_one_block_per_host(lab_up: lab.LabUpResult) -> None:
    proc = deploykit_exec("app,lb1", "--", "cat /etc/os-release")
    assert proc.returncode == 0, proc.stderr
    hosts = [*hosts_of(lab_up, "app"), "lb1"]
    for name in hosts:
        assert f"{name}  rc 0\n" in proc.stdout
    assert proc.stdout.count('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"') == len(hosts)
    assert proc.stdout.rstrip().endswith(f"{len(hosts)} host(s): all exited 0")
    # Nothing from the inventory's variables reaches the output: no address, key or path.
    assert "172.30.99." not in proc.stdout + proc.stderr
    assert ".ssh" not in proc.stdout + proc.stderr


def test_a_host_that_fails_makes_exec_fail(lab_up: lab.LabUpResult) -> None:
    proc = deploykit_exec("--json", "app", "--", 'test "$(hostname)" != app2')
    document = as_json(proc)
    assert proc.returncode == 1
    assert document["failed"] == ["app2"]
    assert document["hosts"]["app2"]["rc"] == 1
    assert document["hosts"]["app2"]["error"] is None
    others = [name for name in hosts_of(lab_up, "app") if name != "app2"]
    assert [document["hosts"][name]["rc"] for name in others] == [0] * len(others)
    people = deploykit_exec("app", "--", 'test "$(hostname)" != app2')
    assert people.returncode == 1
    assert "app2  rc 1\n" in people.stdout
    assert "1 failed: app2" in people.stdout


def test_an_unknown_group_exits_2_naming_the_known_groups(lab_up: lab.LabUpResult) -> None:
    proc = deploykit_exec("apps", "--", "hostname")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "no group or host named 'apps' in the inventory (did you mean 'app'?)" in proc.stderr
    assert "known groups: app, cache, docstore, lb, queue, worker" in proc.stderr


def test_an_empty_command_exits_2(lab_up: lab.LabUpResult) -> None:
    proc = deploykit_exec("app", "--")
    assert proc.returncode == 2
    assert "no command given" in proc.stderr


def test_a_command_past_its_timeout_is_reported_and_the_others_are_not_held(
    lab_up: lab.LabUpResult,
) -> None:
    # The deadline covers each host's connection too, so it leaves a loaded machine room for
    # app2's; app1's command would hold a run that waited for it for a minute.
    started = time.monotonic()
    proc = deploykit_exec(
        "--json",
        "--timeout",
        "8",
        "app",
        "--",
        'if [ "$(hostname)" = app1 ]; then sleep 60; fi; hostname',
    )
    elapsed = time.monotonic() - started
    document = as_json(proc)
    assert proc.returncode == 1
    assert document["failed"] == ["app1"]
    assert document["hosts"]["app1"]["rc"] is None
    assert document["hosts"]["app1"]["error"].startswith("timed out after 8 s")
    assert document["hosts"]["app2"] == {"rc": 0, "stdout": "app2\n", "stderr": "", "error": None}
    assert elapsed < 40, f"exec took {elapsed:.1f} s with an 8 s timeout"


def _inventory_trusting(lab_up: lab.LabUpResult, tmp_path: Path, known_hosts: str) -> Path:
    """A copy of the lab's inventory whose UserKnownHostsFile is a temporary file."""
    lab_known_hosts = lab_up.inventory.parent / ".ssh" / "known_hosts"
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts)
    inventory = tmp_path / "hosts.yml"
    text = lab_up.inventory.read_text()
    assert f"UserKnownHostsFile={lab_known_hosts}" in text
    inventory.write_text(text.replace(str(lab_known_hosts), str(path)))
    return inventory


def _other_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def test_a_host_whose_key_does_not_match_is_refused(
    lab_up: lab.LabUpResult, tmp_path: Path
) -> None:
    address = {h.name: h.address for h in lab_up.hosts}
    lines = (lab_up.inventory.parent / ".ssh" / "known_hosts").read_text().splitlines()
    # app2's line holds another key: exactly what a man in the middle would present.
    forged = [
        f"{address['app2']} {_other_key()}" if line.startswith(f"{address['app2']} ") else line
        for line in lines
    ]
    assert forged != lines
    inventory = _inventory_trusting(lab_up, tmp_path, "\n".join(forged) + "\n")
    before = (tmp_path / "known_hosts").read_text()

    proc = deploykit_exec("--json", "-i", str(inventory), "app", "--", "hostname")
    document = as_json(proc)
    assert proc.returncode == 1
    assert document["failed"] == ["app2"]
    refused = document["hosts"]["app2"]
    assert refused["rc"] is None
    assert refused["stdout"] == ""
    assert re.match(r"refused: its host key does NOT match its known_hosts entry", refused["error"])
    assert document["hosts"]["app1"]["stdout"] == "app1\n"
    assert (tmp_path / "known_hosts").read_text() == before  # nothing was added or replaced


def test_a_host_missing_from_known_hosts_is_refused_not_added(
    lab_up: lab.LabUpResult, tmp_path: Path
) -> None:
    address = {h.name: h.address for h in lab_up.hosts}
    lines = (lab_up.inventory.parent / ".ssh" / "known_hosts").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(f"{address['app3']} ")]
    assert len(kept) == len(lines) - 1
    inventory = _inventory_trusting(lab_up, tmp_path, "\n".join(kept) + "\n")
    before = (tmp_path / "known_hosts").read_text()

    proc = deploykit_exec("--json", "-i", str(inventory), "app", "--", "hostname")
    document = as_json(proc)
    assert proc.returncode == 1
    assert document["failed"] == ["app3"]
    assert document["hosts"]["app3"]["error"].startswith(
        "refused: its ssh-ed25519 host key is not in the UserKnownHostsFile"
    )
    assert (tmp_path / "known_hosts").read_text() == before
    assert address["app3"] not in proc.stdout + proc.stderr


def test_a_proxy_jump_reaches_the_hosts_through_the_jump_host(
    lab_up: lab.LabUpResult, tmp_path: Path
) -> None:
    address = {h.name: h.address for h in lab_up.hosts}
    text = lab_up.inventory.read_text()
    assert "-o StrictHostKeyChecking=yes" in text
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        text.replace(
            "-o StrictHostKeyChecking=yes",
            f"-o StrictHostKeyChecking=yes -J root@{address['lb1']}",
        )
    )
    # SSH_CONNECTION's first word is the client's address as the host sees it: the jump host's.
    proc = deploykit_exec(
        "--json", "-i", str(inventory), "app", "--", 'echo "$(hostname) ${SSH_CONNECTION%% *}"'
    )
    document = as_json(proc)
    assert proc.returncode == 0, proc.stderr
    for name, result in document["hosts"].items():
        assert result["stdout"] == f"{name} {address['lb1']}\n", result
    # Without it, the same hosts see the controller's address.
    direct = as_json(deploykit_exec("--json", "app", "--", 'echo "${SSH_CONNECTION%% *}"'))
    assert all(r["stdout"] != f"{address['lb1']}\n" for r in direct["hosts"].values())
