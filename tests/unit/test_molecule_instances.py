"""Every molecule scenario's hosts are the lab's own (molecule/resources/instances.py): its
create and destroy are the project's, and each platform sits at a fixed address inside a network
its scenario declares. The hosts themselves are proved by the scenarios (test_molecule.py)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from deploykit.project import project_root

ROOT = project_root()
SCENARIOS = sorted((ROOT / "molecule").glob("*/molecule.yml"))


def instances() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "instances", ROOT / "molecule" / "resources" / "instances.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scenario(path: Path) -> dict:
    # molecule expands ${VAR:-default} before it reads the file; the test needs no value of one.
    return yaml.safe_load(os.path.expandvars(path.read_text()))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.parent.name)
def test_the_scenario_makes_its_hosts_with_the_projects_create_and_destroy(path: Path) -> None:
    config = scenario(path)
    playbooks = config["provisioner"]["playbooks"]
    assert playbooks["create"] == "../resources/create.yml"
    assert playbooks["destroy"] == "../resources/destroy.yml"
    # The lab's recipe is the one place that says how a host boots: a scenario that set its own
    # capabilities or mounts would be ignored, silently.
    for platform in config["platforms"]:
        assert not {"capabilities", "volumes", "tmpfs", "command", "privileged"} & set(platform)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.parent.name)
def test_each_host_has_a_fixed_address_in_a_network_of_its_scenario(path: Path) -> None:
    module = instances()
    platforms = scenario(path)["platforms"]
    networks = module._networks(platforms)
    assert networks, "the scenario declares no network of its own"
    for platform in platforms:
        network, address = module._address(platform)
        subnet = ipaddress.ip_network(networks[network]["subnet"])
        assert ipaddress.ip_address(address) in subnet, (platform["name"], address, subnet)


def test_a_wrong_call_prints_the_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert instances().main(["frobnicate", "[]"]) == 2
    assert "usage: instances.py create|destroy" in capsys.readouterr().err
