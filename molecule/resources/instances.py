"""Molecule's `create` and `destroy` for every scenario: the lab's own hosts, in one step each.

usage: instances.py create|destroy PLATFORMS_JSON   (molecule.yml's `platforms`, as JSON)

Each platform becomes a lab host (`deploykit.lab.start_systemd_container`: the base image booting
systemd as PID 1 with the lab's capabilities), on the scenario's network (`docker_networks`) at its
fixed address (`networks`), labelled `owner=molecule` (what `molecule reset` removes); `create`
returns once systemd has booted every host, so no module payload Ansible writes to /tmp can be
swept away by the boot's tmpfiles step.

Why not the docker driver's own playbooks: they create and remove the containers with
community.docker tasks polled through async_status, one module run per poll, and on this 2-core
CI machine that was the costliest part of a scenario after the role itself (the redis scenario,
5 hosts, 2026-12-05: create 17.7 s and 24.5 busy CPU-seconds, the first destroy 9 s and 12 CPU-s
with nothing to destroy). The driver stays `docker`: Ansible still reaches the hosts with
`docker exec`, and `molecule login` works as before.

Prints one JSON line: {"changed": bool, "created": [...], "removed": [...]}.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

from docker.errors import NotFound
from docker.types import IPAMConfig, IPAMPool

from deploykit.errors import LabError
from deploykit.lab import docker_client, start_systemd_container, wait_booted

LABELS = {"owner": "molecule"}
BOOT_TIMEOUT = 120.0


def _networks(platforms: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each network a platform declares: name -> {subnet, gateway}."""
    networks: dict[str, dict[str, str]] = {}
    for platform in platforms:
        for network in platform.get("docker_networks") or []:
            (ipam,) = network["ipam_config"]
            networks[network["name"]] = {"subnet": ipam["subnet"], "gateway": ipam["gateway"]}
    return networks


def _address(platform: dict[str, Any]) -> tuple[str, str]:
    (network,) = platform["networks"]
    return network["name"], network["ipv4_address"]


def create(client: Any, platforms: list[dict[str, Any]]) -> dict[str, Any]:
    created: list[str] = []
    for name, ipam in _networks(platforms).items():
        try:
            existing = client.networks.get(name)
        except NotFound:
            existing = None
        if existing is not None:
            subnets = [c.get("Subnet") for c in existing.attrs["IPAM"].get("Config") or []]
            if subnets == [ipam["subnet"]]:
                continue
            raise LabError(f"network {name} exists with subnet {subnets}, not {ipam['subnet']}")
        ipaddress.ip_network(ipam["subnet"])  # a typo fails here, not inside Docker
        client.networks.create(
            name,
            driver="bridge",
            ipam=IPAMConfig(pool_configs=[IPAMPool(**ipam)]),
            labels=LABELS,
        )
        created.append(f"network {name}")
    for platform in platforms:
        name = platform["name"]
        try:
            container = client.containers.get(name)
        except NotFound:
            container = None
        if container is not None and container.status == "running":
            continue
        if container is not None:
            container.remove(force=True)
        network, address = _address(platform)
        start_systemd_container(
            client,
            name=name,
            hostname=platform.get("hostname", name),
            image=platform["image"],
            network=network,
            address=address,
            labels=LABELS,
            restart=False,
        )
        created.append(name)
    for platform in platforms:
        wait_booted(client, platform["name"], BOOT_TIMEOUT)
    return {"changed": bool(created), "created": created, "removed": []}


def destroy(client: Any, platforms: list[dict[str, Any]]) -> dict[str, Any]:
    removed: list[str] = []
    for platform in platforms:
        try:
            client.containers.get(platform["name"]).remove(force=True)
        except NotFound:
            continue
        removed.append(platform["name"])
    for name in _networks(platforms):
        try:
            client.networks.get(name).remove()
        except NotFound:
            continue
        removed.append(f"network {name}")
    return {"changed": bool(removed), "created": [], "removed": removed}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("create", "destroy"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    action = create if argv[0] == "create" else destroy
    try:
        print(json.dumps(action(docker_client(), json.loads(argv[1]))))
    except LabError as error:
        print(f"molecule {argv[0]}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
