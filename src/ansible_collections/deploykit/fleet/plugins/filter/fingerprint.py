"""deploykit.fleet.configuration_fingerprint: what a host's configuration is made of, besides what
the host itself holds, as one sha256, worked out in this one place for site.yml's roles (the
action plugin deploykit.fleet.converged) and for a deploy's configuration of a node
(playbooks/rollout/vars/main.yml's rollout_configuration):

    {{ code | deploykit.fleet.configuration_fingerprint(hostvars, groups, inventory_hostname) }}

The inputs: the configuration code's digest (given), the inventory's groups, every host's address
as the roles resolve it (deploykit.fleet.private_address), and this host's variables of the
project's prefixes (module_utils/converge.py's PREFIXES; -e included). Only the hash leaves the
controller: the variables hold secrets. An empty code digest gives an empty fingerprint (no skip).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible_collections.deploykit.fleet.plugins.filter.address import private_address
from ansible_collections.deploykit.fleet.plugins.module_utils.converge import (
    fingerprint,
    is_input,
)

DOCUMENTATION = r"""
name: configuration_fingerprint
short_description: The sha256 of what a host's configuration is made of, besides the host itself
description:
  - The code's digest (the input), the inventory's groups, every host's address as the roles
    resolve it, and this host's variables of the project's prefixes. Empty for an empty digest.
positional: hostvars, groups, host
options:
  _input: {description: The configuration code's digest., type: str, required: true}
  hostvars: {description: Every host's variables (hostvars)., type: dict, required: true}
  groups: {description: The inventory's groups (groups)., type: dict, required: true}
  host: {description: This host's inventory name (inventory_hostname)., type: str, required: true}
"""


def _value(variables: Mapping[str, Any], key: str) -> Any:
    """The variable's value as the roles see it; one that cannot be templated here (it names what
    only a role defines) counts by its error's text, which is as stable as its template."""
    try:
        return variables[key]
    except Exception as error:
        return f"<{type(error).__name__}: {error}>"


def host_inputs(
    code: str, hostvars: Mapping[str, Any], groups: Mapping[str, Any], host: str
) -> dict[str, Any]:
    members = {name: list(hosts) for name, hosts in groups.items()}
    this = hostvars[host]
    return {
        "code": code,
        "groups": members,
        "addresses": {name: private_address(hostvars[name], name) for name in members["all"]},
        "vars": {key: _value(this, key) for key in sorted(this.keys()) if is_input(key)},
    }


def configuration_fingerprint(
    code: str, hostvars: Mapping[str, Any], groups: Mapping[str, Any], host: str
) -> str:
    return fingerprint(host_inputs(code, hostvars, groups, host)) if code else ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"configuration_fingerprint": configuration_fingerprint}
