"""Run one of a role's task files on a molecule scenario's hosts, from its testinfra tests (a
rotation, a rejoin, a copy: what a later converge does, checked apart from the whole role).
Linked into the scenarios' tests/ folders that use it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def run_role_tasks(
    inventory: str, hosts: str, role: str, tasks_from: str, *extra: str
) -> tuple[dict[str, dict[str, int]], str]:
    """Run ROLE's tasks/<tasks_from>.yml on ``hosts`` (a pattern), as the role runs them, with the
    scenario's inventory: each host's recap counts (ok, changed, failed...) and the whole output."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as workdir:
        playbook = Path(workdir) / f"{tasks_from}.yml"
        playbook.write_text(
            f"- hosts: {hosts}\n"
            "  gather_facts: false\n"
            "  tasks:\n"
            "    - ansible.builtin.include_role:\n"
            f"        name: {role}\n"
            f"        tasks_from: {tasks_from}\n"
        )
        ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
        proc = subprocess.run(
            [str(ansible_playbook), "-i", inventory, *extra, str(playbook)],
            cwd=root, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},  # a plain recap
        )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    recaps = {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in re.findall(r"^(\S+)\s*:\s*(ok=.*)$", proc.stdout, re.MULTILINE)
    }
    assert recaps, output[-3000:]
    return recaps, output
