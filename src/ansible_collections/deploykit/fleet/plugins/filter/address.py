"""deploykit.fleet.private_address: a host's private address, decided in this one place for every
role (services bind to it, firewalls, pg_hba.conf and HAProxy's backend admit or reach peers by it).

    {{ hostvars[inventory_hostname] | deploykit.fleet.private_address }}
        this host's address to bind to: deploykit_private_address, else the default IPv4 address
        fact, else '' (the roles' checks then ask for deploykit_private_address);
    {{ hostvars[host] | deploykit.fleet.private_address(host) }}
        a peer's address, to admit or reach it: the same, else its ansible_host, else its
        inventory name ``host`` (an IP address then, which the roles' checks verify).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOCUMENTATION = r"""
name: private_address
short_description: A host's private address, as every deploykit role resolves it
description:
  - deploykit_private_address, else the host's default IPv4 address fact; with I(host) (a peer's
    inventory name), else its ansible_host, else that name. Empty when nothing is known and no
    I(host) is given.
positional: host
options:
  _input: {description: "The host's variables (hostvars[name]).", type: dict, required: true}
  host:
    description: The host's inventory name (a peer's falls back to ansible_host, then to it).
    type: str
"""


def private_address(hostvars: Mapping[str, Any], host: str | None = None) -> str:
    facts = hostvars.get("ansible_facts") or {}
    default_ipv4 = facts.get("default_ipv4") if isinstance(facts, Mapping) else None
    candidates = [
        hostvars.get("deploykit_private_address"),
        default_ipv4.get("address") if isinstance(default_ipv4, Mapping) else None,
    ]
    if host is not None:
        candidates += [hostvars.get("ansible_host"), host]
    return next((str(value) for value in candidates if value), "")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"private_address": private_address}
