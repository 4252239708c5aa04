"""A wrong variable fails before any task runs on any host, and names the variable."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from deploykit import lab

pytestmark = pytest.mark.e2e


def site(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", "site.yml", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def assert_stopped_in_preflight(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    for text in expected:
        assert text in output, output[-4000:]
    # Nothing ran past the preflight play: no other play started (not even the one that gathers
    # facts), and no host was changed.
    plays = re.findall(r"^PLAY \[(.*)\]", proc.stdout, flags=re.MULTILINE)
    assert plays == ["Check every host's variables before anything changes"], plays
    recap = proc.stdout[proc.stdout.rindex("PLAY RECAP") :]
    assert all("changed=0" in line for line in recap.splitlines() if "ok=" in line)


def test_a_port_given_as_text_is_refused(lab_up: lab.LabUpResult) -> None:
    proc = site("-e", "redis_port=eighty")
    assert_stopped_in_preflight(proc, "redis_port", "cache1")


def test_an_unknown_docstore_engine_is_refused(lab_up: lab.LabUpResult) -> None:
    proc = site("-e", "deploykit_docstore_engine=mongo")
    assert_stopped_in_preflight(
        proc, "deploykit_docstore_engine is 'mongo': set it to mongodb or postgresql"
    )


def test_a_missing_secret_is_refused(lab_up: lab.LabUpResult, tmp_path: Path) -> None:
    # The lab's inventory without its secrets file.
    inventory = tmp_path / "hosts.yml"
    shutil.copy(lab_up.inventory, inventory)
    proc = site("-i", str(inventory))
    assert_stopped_in_preflight(proc, "missing required arguments", "redis_password")


def test_deploykit_check_names_the_same_mistakes(lab_up: lab.LabUpResult, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    text = lab_up.inventory.read_text()
    inventory.write_text(
        text.replace("deploykit_docstore_engine: postgresql", "deploykit_docstore_engine: mongo")
    )
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "cache.yml").write_text("redis_port: eighty\n")
    proc = subprocess.run(
        ["deploykit", "check", "-i", str(inventory)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "variable 'redis_port' (group 'cache'" in proc.stdout
    assert "variable 'deploykit_docstore_engine' (group 'all')" in proc.stdout
