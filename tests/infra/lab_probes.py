"""What every role's tests do on a molecule scenario's hosts, in one place: keep a module's
tests to its scenario, read its role's defaults, name the scenario's hosts, read a host's address,
knock on a port from another host, make one HTTP request from a host, read a unit's properties
and the sandbox every unit of a release's code runs in. Linked into each scenario's
tests/ folder beside the test modules (molecule's testinfra verifier runs pytest there, which puts
that folder on sys.path)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

# The repository (this file is linked into molecule/*/tests/: resolve() finds tests/infra/).
ROOT = Path(__file__).resolve().parents[2]

# Runs on the source host: connect to (address, port) and say how it went.
KNOCK = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print("error: %s" % error)
"""

# Runs on a client: one request; prints {status, headers, body} or {error}.
HTTP_CLIENT = r"""
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], method=sys.argv[2])
try:
    response = urllib.request.urlopen(request, timeout=5)
    status, headers, body = response.status, response.headers, response.read()
except urllib.error.HTTPError as error:
    status, headers, body = error.code, error.headers, error.read()
except OSError as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
print(json.dumps({"status": status, "headers": {k.lower(): v for k, v in headers.items()},
                  "body": body.decode(errors="replace")}))
"""

#: The hardening of every unit that runs a release's code (the app's web unit, the worker's unit:
#: the same block in both roles' templates), as `systemctl show` reports it.
RELEASE_UNIT_SANDBOX = {
    "User": "deploykit",
    "KillMode": "mixed",
    "KillSignal": "15",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "RestrictSUIDSGID": "yes",
    "RestrictRealtime": "yes",
    "LockPersonality": "yes",
    "UMask": "0027",
}


def only_in_scenario(scenario: str) -> pytest.MarkDecorator:
    """A test module's pytestmark: its tests run on the hosts of the molecule scenario SCENARIO
    only. molecule names the scenario it verifies in MOLECULE_SCENARIO_NAME; without it (pytest
    run by hand on a scenario's inventory) the module runs."""
    return pytest.mark.skipif(
        os.environ.get("MOLECULE_SCENARIO_NAME", scenario) != scenario,
        reason=f"hosts of the molecule scenario '{scenario}' only",
    )


def role_defaults(role: str) -> dict[str, Any]:
    """roles/ROLE/defaults/main.yml: what a scenario that sets nothing else gets."""
    defaults: dict[str, Any] = yaml.safe_load(
        (ROOT / "roles" / role / "defaults/main.yml").read_text()
    )
    return defaults


def scenario_host(request: pytest.FixtureRequest, name: str) -> testinfra.host.Host:
    """The scenario's host NAME, from molecule's inventory (the verifier's --ansible-inventory)."""
    inventory = request.config.option.ansible_inventory
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)


def scenario_hosts(request: pytest.FixtureRequest, *names: str) -> dict[str, testinfra.host.Host]:
    """The scenario's hosts NAMES by name."""
    return {name: scenario_host(request, name) for name in names}


def ipv4(host: testinfra.host.Host) -> str:
    """A host's address on the scenario's network: the one its default route leaves from."""
    addresses = [a for a in host.interface.default().addresses if "." in a]
    assert addresses, f"{host.backend.get_hostname()} has no IPv4 address on its default interface"
    return addresses[0]


def knock(source: testinfra.host.Host, address: str, port: int, timeout: float = 3.0) -> str:
    """Open a TCP connection from SOURCE to address:port: open, timeout, refused or error."""
    result = source.run("python3 -c %s %s %s %s", KNOCK, address, str(port), str(timeout))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def http_request(client: testinfra.host.Host, url: str, method: str = "GET") -> dict:
    """One HTTP request from CLIENT: {status, headers (lower-case names), body} or {error}."""
    result = client.run("python3 -c %s %s %s", HTTP_CLIENT, url, method)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def listening(host: testinfra.host.Host) -> dict[int, set[str]]:
    """The TCP sockets listening on HOST: port -> addresses."""
    sockets: dict[int, set[str]] = {}
    for url in host.socket.get_listening_sockets():
        if not url.startswith("tcp://"):
            continue
        address, _, port = url[len("tcp://") :].rpartition(":")
        sockets.setdefault(int(port), set()).add(address)
    return sockets


def unit_properties(host: testinfra.host.Host, unit: str, names: Any) -> dict[str, str]:
    """`systemctl show` of the unit's properties NAMES on HOST: {name: value}."""
    shown = host.run("systemctl show %s --property=%s", unit, ",".join(names))
    assert shown.rc == 0, shown.stderr
    return dict(line.split("=", 1) for line in shown.stdout.splitlines())


def installed_distributions(host: testinfra.host.Host, venv: str) -> dict[str, str]:
    """{name: version} of every distribution VENV's Python finds (names as wheel file names
    spell them, '-' for '_' and '.'), read with importlib.metadata: a release's virtualenv has
    no pip to ask."""
    listed = host.run(
        "%s/bin/python -c %s",
        venv,
        "import importlib.metadata as m, json; "
        "print(json.dumps([[d.metadata['Name'], d.version] for d in m.distributions()]))",
    )
    assert listed.rc == 0, listed.stderr
    return {
        name.lower().replace("_", "-").replace(".", "-"): version
        for name, version in json.loads(listed.stdout)
    }
