"""Maintenance mode on the lab (the shop, deployed by `deploykit up`), under load through the
balancer: `deploykit maintenance on` turns the dynamic paths into the 503 page with Retry-After
while the baked pages and the allowed address still get the real thing; `off` brings the app back.
Neither reloads HAProxy (its processes stay the same) and no connection of the load is cut: every
request gets an answer, a 503 or the page. The mode survives a reload (the files), and the history
records both changes. Each test leaves the mode off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LabShell, deploykit
from loadgen import STATUS, LoadGenerator

pytestmark = pytest.mark.e2e

MESSAGE = "Back at <b>noon</b>: the database moves"
RETRY_AFTER = 120


def maintenance(*args: str) -> dict[str, Any]:
    proc = deploykit("maintenance", *args, "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    balancers: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])["balancers"]
    return balancers


def fetch(lab_shell: LabShell, host: str, url: str) -> tuple[int, dict[str, str], str]:
    """GET url from a lab host (curl): status, headers (lower-case names), body."""
    raw = lab_shell.run(host, f"curl -sS --max-time 10 -D - {url}")
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def haproxy_processes(lab_shell: LabShell) -> str:
    return lab_shell.run("lb1", "pgrep -d, -x haproxy")


@pytest.fixture
def mode_off(shop: str) -> Iterator[str]:
    """The balancer's URL; the mode is off before and after the test, whatever happens in it."""
    assert all(not s["enabled"] for s in maintenance("status").values())
    try:
        yield shop
    finally:
        maintenance("off")


def test_maintenance_on_and_off_under_load_cuts_no_connection(
    mode_off: str, lab_shell: LabShell
) -> None:
    lb = lab_shell.addresses["lb1"]
    allowed = lab_shell.addresses["worker1"]
    processes = haproxy_processes(lab_shell)
    paths: list[str | tuple[str, float]] = [("/", 1), ("/products", 2), ("/healthz", 1)]
    with LoadGenerator(mode_off, paths=paths, concurrency=6, rate=60) as load:
        load.phase("before")
        time.sleep(3)
        load.phase("switching on")
        states = maintenance(
            "on", "--message", MESSAGE, "--allow", allowed, "--retry-after", str(RETRY_AFTER)
        )
        load.phase("maintenance")
        assert states["lb1"]["enabled"] and states["lb1"]["changed"], states
        assert states["lb1"]["allow"] == [f"{allowed}/32"], states

        # An address outside the allowed one gets the page; the allowed one, the app.
        status, headers, body = fetch(lab_shell, "app1", f"http://{lb}/products")
        assert status == 503, (status, body[:300])
        assert headers.get("retry-after") == str(RETRY_AFTER), headers
        assert headers.get("cache-control") == "no-store", headers
        assert "Back at &lt;b&gt;noon&lt;/b&gt;: the database moves" in body, body
        status, headers, _ = fetch(lab_shell, "worker1", f"http://{lb}/products")
        assert status == 200 and headers.get("x-served-by", "").startswith("app"), headers
        # Baked pages are still served, from nginx.
        status, headers, _ = fetch(lab_shell, "app1", f"http://{lb}/")
        assert (status, headers.get("x-served-by")) == (200, "static"), headers

        report_on = json.loads(deploykit("status", "--json", timeout=300).stdout.splitlines()[-1])
        balancer = next(n for n in report_on["nodes"] if n["role"] == "lb")
        assert balancer["maintenance"]["enabled"] is True, balancer
        assert balancer["maintenance"]["message"] == MESSAGE, balancer
        time.sleep(3)

        load.phase("switching off")
        states = maintenance("off")
        load.phase("after")
        assert not states["lb1"]["enabled"] and states["lb1"]["changed"], states
        time.sleep(3)
    report = load.report()
    print(report.format_table())

    # Neither change reloaded or restarted HAProxy.
    assert haproxy_processes(lab_shell) == processes
    samples = load.samples
    # No connection cut, no timeout: every request got an answer, and every failed one is a 503.
    failed = [s for s in samples if s.failure is not None]
    assert all(s.failure == STATUS and s.status == 503 for s in failed), [
        s.to_dict() for s in failed if s.status != 503
    ][:5]
    for phase in ("before", "after"):
        assert report.phase(phase).failures == 0, report.phase(phase).to_dict()
    during = [s for s in samples if s.phase == "maintenance"]
    dynamic = [s for s in during if s.path != "/"]
    baked = [s for s in during if s.path == "/"]
    assert dynamic and all(s.status == 503 for s in dynamic), {s.status for s in dynamic}
    assert baked and all(s.status == 200 for s in baked), {s.status for s in baked}


def test_maintenance_survives_a_reload_and_is_recorded(mode_off: str, lab_shell: LabShell) -> None:
    lb = lab_shell.addresses["lb1"]
    maintenance("on", "--hide-pages", "--message", "A short break")
    again = maintenance("on", "--hide-pages", "--message", "A short break")
    assert again["lb1"]["changed"] is False, again

    # A reload reads the mode from the files deploykit wrote.
    lab_shell.run("lb1", "systemctl reload haproxy")
    deadline = time.monotonic() + 10
    while (status := fetch(lab_shell, "app1", f"http://{lb}/")[0]) != 503:
        assert time.monotonic() < deadline, f"the baked page answers {status} after the reload"
        time.sleep(0.2)
    assert fetch(lab_shell, "app1", f"http://{lb}/products")[0] == 503
    assert maintenance("status")["lb1"]["files_differ"] is False

    maintenance("off")
    assert fetch(lab_shell, "app1", f"http://{lb}/products")[0] == 200
    proc = deploykit("releases", "--json", "--limit", "5", timeout=300)
    records = json.loads(proc.stdout.splitlines()[-1])["records"]
    actions = [(r["action"], r.get("hosts"), r.get("message")) for r in records]
    assert actions[-2:] == [
        ("maintenance on", ["lb1"], "A short break"),
        ("maintenance off", ["lb1"], None),
    ], actions
