"""Testinfra checks of the bake role, run by the molecule scenario ``static`` after test_static.py
(whose byte-for-byte checks are of the release's own pages).

``static-worker`` runs the fixture release (molecule/static/bakery) and the bake role; its pages are
baked again "from live data" (the fixture's index says so) and published on ``static-lb`` through
the one forced command the balancer accepts for the worker's key.
"""

from __future__ import annotations

import json

import pytest
from lab_probes import only_in_scenario, scenario_host

SCENARIO = "static"

pytestmark = only_in_scenario(SCENARIO)

APP = "/srv/bakery"
KEYS = "/etc/deploykit-bake/bakery"
WORKER_ADDRESS = "172.30.108.20"
LB_ADDRESS = "172.30.108.10"
FORCED = (
    f'restrict,from="{WORKER_ADDRESS}",command="/usr/local/libexec/deploykit-pages receive {APP}"'
)


@pytest.fixture(scope="module")
def worker(request):
    return scenario_host(request, "static-worker")


@pytest.fixture(scope="module")
def lb(request):
    return scenario_host(request, "static-lb")


def test_the_timer_is_on_and_the_bake_is_a_oneshot_of_the_service_account(worker):
    assert worker.service("bakery-bake.timer").is_enabled
    assert worker.service("bakery-bake.timer").is_running
    unit = worker.file("/etc/systemd/system/bakery-bake.service")
    assert (unit.user, unit.mode) == ("root", 0o644)
    assert "Type=oneshot" in unit.content_string
    assert "User=deploykit" in unit.content_string
    assert f"ReadWritePaths={APP}/bakes" in unit.content_string
    assert (
        "OnCalendar=*-*-* 03:00:00"
        in worker.file("/etc/systemd/system/bakery-bake.timer").content_string
    )


def test_the_key_is_the_service_accounts_and_the_balancer_is_known(worker):
    key = worker.file(f"{KEYS}/id_ed25519")
    assert (key.user, key.mode) == ("deploykit", 0o600)
    settings = worker.file(f"{KEYS}/bake.json")
    assert (settings.user, settings.group, settings.mode) == ("root", "deploykit", 0o640)
    assert json.loads(settings.content_string)["balancers"] == [LB_ADDRESS]
    assert worker.file(f"{KEYS}/known_hosts").content_string.startswith(
        f"{LB_ADDRESS} ssh-ed25519 "
    )


def test_the_balancer_accepts_the_key_for_the_receiver_only(worker, lb):
    public = worker.file(f"{KEYS}/id_ed25519.pub").content_string.split()[1]
    lines = [
        line
        for line in lb.file("/root/.ssh/authorized_keys").content_string.splitlines()
        if public in line
    ]
    assert len(lines) == 1 and lines[0].startswith(FORCED + " ssh-ed25519 "), lines


def test_a_bake_from_live_data_goes_live_on_the_balancer(worker, lb):
    started = worker.run("systemctl start bakery-bake.service")
    assert started.rc == 0, worker.run("journalctl -u bakery-bake -n 20 --no-pager").stdout
    record = json.loads(worker.file(f"{APP}/bakes/last.json").content_string)
    assert record["outcome"] == "published", record
    assert record["balancers"] == {LB_ADDRESS: "published"}, record
    assert lb.run("readlink %s/static/current", APP).stdout.strip() == f"bakes/{record['bake_id']}"
    page = lb.run("curl -sS --max-time 5 http://%s/", LB_ADDRESS)
    assert "<p>baked live</p>" in page.stdout, page.stdout
    assert "/about%20us.html" in lb.file("/etc/haproxy/baked-paths.lst").content_string
