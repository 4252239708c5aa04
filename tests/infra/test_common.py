"""Testinfra checks of the common role, run by the molecule scenario ``common``.

The scenario has three hosts, each in a different inventory group:

* ``fw-target`` (app): runs listeners on 8080 (declared through ``firewall_allow``, admitted from
  group ``lb``) and 9090 (declared by nobody);
* ``fw-allowed`` (lb): may reach fw-target:8080;
* ``fw-other`` (cache): may not.

The per-host checks use testinfra's ``host`` fixture (every host of the scenario). The firewall
proof connects from one host to another, so it picks the hosts itself by name.
"""

from __future__ import annotations

import json

import pytest
from lab_probes import ipv4, knock, only_in_scenario, role_defaults, scenario_hosts

SCENARIO = "common"

pytestmark = only_in_scenario(SCENARIO)

ROLE_DEFAULTS = role_defaults("common")

TARGET, ALLOWED, OTHER = "fw-target", "fw-allowed", "fw-other"


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    return scenario_hosts(request, TARGET, ALLOWED, OTHER)


@pytest.fixture(scope="module")
def target_address(lab) -> str:
    """fw-target's address on the lab network: the one its default route leaves from."""
    return ipv4(lab[TARGET])


def nft_json(host, *command: str) -> list[dict]:
    result = host.run("nft -j " + " ".join(["%s"] * len(command)), *command)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)["nftables"]


# --- every host --------------------------------------------------------------------------------


def test_base_packages_are_installed(host):
    for package in [*ROLE_DEFAULTS["common_packages"], "systemd-timesyncd"]:
        assert host.package(package).is_installed, package


def test_timezone_is_utc(host):
    assert host.file("/etc/localtime").linked_to.endswith("/Etc/UTC")


def test_timesyncd_is_configured_and_enabled(host):
    dropin = host.file("/etc/systemd/timesyncd.conf.d/deploykit.conf")
    assert dropin.content_string.startswith("#")
    assert "NTP=0.debian.pool.ntp.org" in dropin.content_string
    assert host.service("systemd-timesyncd").is_enabled
    # In a container systemd skips the unit (ConditionVirtualization=!container): enabled only.


def test_service_user_is_an_unprivileged_system_account(host):
    user = host.user("deploykit")
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"
    assert user.group == "deploykit"
    assert user.uid < 1000
    assert user.home == "/var/lib/deploykit"
    assert user.password in ("!", "*", "!*", "!!"), "the service user must have no password"
    home = host.file("/var/lib/deploykit")
    assert home.is_directory
    assert home.user == "deploykit"
    assert home.mode == 0o750


def test_nftables_is_enabled_and_loaded(host):
    service = host.service("nftables")
    assert service.is_enabled
    assert service.is_running


def test_input_policy_is_drop(host):
    chains = [
        item["chain"]
        for item in nft_json(host, "list", "chain", "inet", "deploykit", "input")
        if "chain" in item
    ]
    assert chains, "chain inet deploykit input is not loaded"
    assert chains[0]["hook"] == "input"
    assert chains[0]["policy"] == "drop"


def test_other_tools_rules_survive(host):
    # The ruleset is not flushed: Docker's embedded DNS (its NAT rules) still answers.
    assert host.run("getent hosts %s", ALLOWED).rc == 0


# --- the declarations on fw-target -------------------------------------------------------------


def test_role_declaration_admits_the_lb_hosts_only(lab):
    content = lab[TARGET].file("/etc/nftables.d/probe.nft").content_string
    allowed = lab[ALLOWED].interface.default().addresses
    other = lab[OTHER].interface.default().addresses
    assert content.startswith("#")
    assert any(f"ip saddr {{ {a} }} tcp dport {{ 8080 }} accept" in content for a in allowed)
    assert not any(a in content for a in other)


def test_inventory_rules_and_empty_group(lab):
    target = lab[TARGET]
    content = target.file("/etc/nftables.d/00-inventory.nft").content_string
    ruleset = target.run("nft list chain inet deploykit input").stdout
    # node-exporter: lb and cache, both admitted.
    assert '"inventory/node-exporter"' in ruleset
    for name in (ALLOWED, OTHER):
        address = ipv4(lab[name])
        assert address in content
    # jobs: group `worker` has no hosts, so the rule admits nobody (and is not "everyone").
    assert "admits NOBODY" in content
    assert "5555" not in ruleset


# --- the proof: connections between the hosts ---------------------------------------------------


def test_listeners_are_up_on_the_target(lab):
    target = lab[TARGET]
    assert knock(target, "127.0.0.1", 8080) == "open"
    assert knock(target, "127.0.0.1", 9090) == "open"


def test_admitted_group_reaches_the_declared_port(lab, target_address):
    assert knock(lab[ALLOWED], target_address, 8080) == "open"


def test_other_group_is_dropped_on_the_declared_port(lab, target_address):
    assert knock(lab[OTHER], target_address, 8080) == "timeout"


def test_undeclared_port_is_dropped_even_for_admitted_group(lab, target_address):
    assert knock(lab[ALLOWED], target_address, 9090) == "timeout"


def test_ssh_is_admitted_from_the_configured_sources_only(lab, target_address):
    """fw-target admits SSH from fw-allowed only (common_firewall_ssh_sources: its address):
    fw-other, on the same network, is dropped; fw-allowed admits the scenario's network."""
    assert knock(lab[ALLOWED], target_address, 22) == "open"
    assert knock(lab[OTHER], target_address, 22) == "timeout"
    assert knock(lab[OTHER], ipv4(lab[ALLOWED]), 22) == "open"
    rules = lab[TARGET].run("nft list chain inet deploykit input").stdout
    ssh = [line.strip() for line in rules.splitlines() if 'comment "ssh"' in line]
    # One rule, from that address only (nft may print a one-element set without its braces).
    assert len(ssh) == 1 and ssh[0].startswith("ip saddr "), ssh
    assert ssh[0].replace("{", "").replace("}", "").split()[2] in {
        ipv4(lab[ALLOWED]),
        f"{ipv4(lab[ALLOWED])}/32",
    }, ssh


def test_ssh_from_everywhere_only_by_explicit_opt_in(lab):
    """fw-other sets common_firewall_ssh_from_anywhere (no sources): SSH from every address."""
    assert knock(lab[TARGET], ipv4(lab[OTHER]), 22) == "open"
    rules = lab[OTHER].run("nft list chain inet deploykit input").stdout
    ssh = [line.strip() for line in rules.splitlines() if 'comment "ssh"' in line]
    assert ssh == ['tcp dport 22 accept comment "ssh"'], ssh
