"""Testinfra checks of the keepalived role, run by the molecule scenario ``haproxy`` after
test_haproxy.py: two balancers, ``haproxy-lb`` (priority 150) and ``haproxy-lb2`` (149), share the
floating address 172.30.102.100; clients are the scenario's app hosts.

The address follows HAProxy: HAProxy stopped on the holder, the other balancer answers on the
address; the first one, healthy again, does not take it back (nopreempt); keepalived stopped on
the new holder (it leaves with a priority-0 advertisement), the address moves back. A host that
falls silent instead is noticed after about three advertisements (3 s, ../shared/LAB-NOTES.md).
Each move is timed and printed; the test asserts a generous deadline, the figure is what to read.
"""

from __future__ import annotations

import time

import pytest
from lab_probes import only_in_scenario, scenario_hosts

SCENARIO = "haproxy"

pytestmark = only_in_scenario(SCENARIO)

LB1, LB2, CLIENT = "haproxy-lb", "haproxy-lb2", "haproxy-app1"
ADDRESSES = {LB1: "172.30.102.10", LB2: "172.30.102.13"}
VIRTUAL = "172.30.102.100"
MONITOR = f"http://{VIRTUAL}/haproxy-alive"
#: A move takes a few advertisements (1 s each) or checks (1 s, fall 2); this bounds a broken one.
DEADLINE = 15.0


@pytest.fixture(scope="module")
def hosts(request):
    return scenario_hosts(request, LB1, LB2, CLIENT)


def holders(hosts) -> list[str]:
    return [
        name
        for name in (LB1, LB2)
        if f"inet {VIRTUAL}/24" in hosts[name].run("ip -4 -o addr show").stdout
    ]


def wait_for_holder(hosts, expected: str) -> float:
    """Seconds until ``expected`` alone holds the address and HAProxy answers on it."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        if holders(hosts) == [expected]:
            answer = hosts[CLIENT].run(
                "curl -sS -o /dev/null -w '%%{http_code}' --max-time 1 %s", MONITOR
            )
            if answer.stdout == "200":
                return time.monotonic() - start
        time.sleep(0.2)
    pytest.fail(f"{expected} does not hold {VIRTUAL} after {DEADLINE} s: holders {holders(hosts)}")


def test_keepalived_runs_on_both_balancers_with_a_private_configuration(hosts):
    for name in (LB1, LB2):
        host = hosts[name]
        assert host.service("keepalived").is_running
        assert host.service("keepalived").is_enabled
        config = host.file("/etc/keepalived/keepalived.conf")
        assert (config.user, config.mode) == ("root", 0o600)
        other = ADDRESSES[LB2 if name == LB1 else LB1]
        assert f"unicast_src_ip {ADDRESSES[name]}" in config.content_string
        assert other in config.content_string


def test_the_firewall_admits_vrrp_from_the_balancers_only(hosts):
    declaration = hosts[LB1].file("/etc/nftables.d/keepalived.nft").content_string
    assert "ip saddr { 172.30.102.10, 172.30.102.13 } meta l4proto 112 accept" in declaration
    assert "172.30.102.11" not in declaration and "172.30.102.12" not in declaration


def test_one_balancer_holds_the_address_and_haproxy_answers_on_it(hosts):
    # Which one depends on the tests before (test_haproxy.py restarts HAProxy on haproxy-lb, and
    # nopreempt leaves the address where it went): exactly one, and HAProxy answers there.
    holder = holders(hosts)
    assert len(holder) == 1, holder
    seconds = wait_for_holder(hosts, holder[0])
    print(f"{holder[0]} holds {VIRTUAL}, answered in {seconds:.1f} s")
    # The monitor URI is HAProxy's own answer: no app clone involved.
    answer = hosts[CLIENT].run("curl -sS -i --max-time 2 %s", MONITOR)
    assert answer.stdout.startswith("HTTP/1.1 200") and "Service ready." in answer.stdout, (
        answer.stdout
    )


def test_the_address_follows_haproxy_and_the_host(hosts):
    (first,) = holders(hosts)
    other = LB2 if first == LB1 else LB1
    try:
        hosts[first].run("systemctl stop haproxy")
        moved = wait_for_holder(hosts, other)
        print(f"HAProxy stopped on {first}: {other} answers on {VIRTUAL} after {moved:.1f} s")

        hosts[first].run("systemctl start haproxy")
        time.sleep(4)  # two checks pass on it again (rise 2): it could take the address, must not
        assert holders(hosts) == [other], f"{first} took the address back (nopreempt)"

        hosts[other].run("systemctl stop keepalived")
        back = wait_for_holder(hosts, first)
        print(f"keepalived stopped on {other}: {first} answers on {VIRTUAL} after {back:.1f} s")
    finally:
        hosts[first].run("systemctl start haproxy")
        hosts[other].run("systemctl start keepalived")
