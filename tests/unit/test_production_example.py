"""The documented production inventory stays true to the roles: `deploykit check` accepts it."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit import lab
from deploykit.inventory import validate_inventory
from deploykit.project import project_root

ROOT = project_root()
EXAMPLE = ROOT / "inventories" / "production"


def test_the_production_example_passes_check() -> None:
    problems = validate_inventory(EXAMPLE / "hosts.yml", roles_dir=ROOT / "roles")
    assert [str(p) for p in problems] == []


def test_every_required_secret_of_every_role_is_shown_in_the_example() -> None:
    example = (EXAMPLE / "group_vars" / "all.yml").read_text()
    for specs in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        role = specs.parent.parent.name
        options = yaml.safe_load(specs.read_text())["argument_specs"]["main"]["options"]
        for name, option in options.items():
            if option.get("required") and option.get("no_log"):
                assert f"{name}: " in example, f"role {role}: {name} is not in the example"


# --- who may reach SSH: the common role's own check, run by Ansible on the inventories ----------

CHECKS_PLAYBOOK = [
    {
        "name": "The common role's checks (tasks/checks.yml), on every host; nothing is contacted",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Run them",
                "ansible.builtin.include_role": {"name": "common", "tasks_from": "checks"},
            }
        ],
    }
]


def run_common_checks(inventory: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """ansible-playbook with the common role's checks against ``inventory``: what site.yml runs
    on every host before the role changes anything. assert and debug run on the controller."""
    playbook = tmp_path / "checks.yml"
    playbook.write_text(yaml.safe_dump(CHECKS_PLAYBOOK, sort_keys=False))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_CONFIG": str(tmp_path / "no-ansible.cfg"),  # not the project's (fact cache)
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(playbook),
        ],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def one_host_inventory(tmp_path: Path, host_vars: dict[str, Any]) -> Path:
    inventory = tmp_path / "hosts.yml"
    host = {"ansible_host": "192.0.2.10", **host_vars}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"web1": host}}}))
    return inventory


def test_the_production_example_admits_ssh_from_its_admin_networks_only(tmp_path: Path) -> None:
    sources = yaml.safe_load((EXAMPLE / "group_vars" / "all.yml").read_text())[
        "common_firewall_ssh_sources"
    ]
    assert sources, "the production example must name where SSH is admitted from"
    for source in sources:
        network = ipaddress.ip_network(source)
        assert network.prefixlen >= 8, f"{source} is not an admin network"
    result = run_common_checks(EXAMPLE / "hosts.yml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed=0" in result.stdout and "WARNING: common_firewall_ssh_from_anywhere" not in (
        result.stdout
    )


@pytest.mark.parametrize(
    ("host_vars", "says"),
    [
        ({}, "common_firewall_ssh_sources is empty: SSH would be admitted from every address"),
        ({"common_firewall_ssh_sources": []}, "common_firewall_ssh_sources is empty"),
        (
            {"common_firewall_ssh_sources": ["10.0.0.0/8", "0.0.0.0/0"]},
            "holds 0.0.0.0/0, which admits every address",
        ),
        ({"common_firewall_ssh_sources": ["::/0"]}, "holds ::/0, which admits every address"),
        (
            {
                "common_firewall_ssh_sources": ["10.0.0.0/8"],
                "common_firewall_ssh_from_anywhere": True,
            },
            "choose one",
        ),
        ({"common_firewall_ssh_sources": ["bastion.example.com"]}, "not: bastion.example.com"),
    ],
)
def test_ssh_from_every_address_is_refused_unless_opted_into(
    tmp_path: Path, host_vars: dict[str, Any], says: str
) -> None:
    result = run_common_checks(one_host_inventory(tmp_path, host_vars), tmp_path)
    assert result.returncode != 0, result.stdout
    assert says in " ".join(result.stdout.split()), result.stdout


def test_ssh_from_every_address_is_an_announced_opt_in(tmp_path: Path) -> None:
    inventory = one_host_inventory(tmp_path, {"common_firewall_ssh_from_anywhere": True})
    result = run_common_checks(inventory, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING: common_firewall_ssh_from_anywhere is true" in " ".join(result.stdout.split())


def test_the_lab_admits_ssh_from_its_own_network(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    spec = lab.LabSpec(subnet="172.30.199.0/24")
    inventory.write_text(
        lab.render_inventory(
            spec.hosts(),
            private_key=tmp_path / "id",
            known_hosts=tmp_path / "kh",
            subnet=spec.subnet,
        )
    )
    document = yaml.safe_load(inventory.read_text())
    assert document["all"]["vars"]["common_firewall_ssh_sources"] == ["172.30.199.0/24"]
    result = run_common_checks(inventory, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
