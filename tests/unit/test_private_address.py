"""The one home of a host's private address (the filter deploykit.fleet.private_address), as every
role resolves it: its own address to bind to, and a peer's to admit or reach."""

from __future__ import annotations

import pytest

from ansible_collections.deploykit.fleet.plugins.filter.address import FilterModule, private_address

FACTS = {"ansible_facts": {"default_ipv4": {"address": "10.0.0.5"}}}


@pytest.mark.parametrize(
    ("hostvars", "own", "peer"),
    [
        ({"deploykit_private_address": "10.9.9.9", **FACTS, "ansible_host": "192.0.2.1"},
         "10.9.9.9", "10.9.9.9"),
        ({"deploykit_private_address": "", **FACTS, "ansible_host": "192.0.2.1"},
         "10.0.0.5", "10.0.0.5"),
        ({"ansible_facts": {}, "ansible_host": "192.0.2.1"}, "", "192.0.2.1"),
        ({"ansible_facts": {"default_ipv4": {}}}, "", "node7"),
        ({}, "", "node7"),
    ],
    ids=["inventory", "facts", "ansible_host", "no-default-route", "nothing"],
)  # fmt: skip
def test_the_address_falls_back_in_one_order(hostvars: dict, own: str, peer: str) -> None:  # type: ignore[type-arg]
    assert private_address(hostvars) == own
    assert private_address(hostvars, "node7") == peer


def test_the_filter_is_published_under_its_name() -> None:
    assert FilterModule().filters() == {"private_address": private_address}
