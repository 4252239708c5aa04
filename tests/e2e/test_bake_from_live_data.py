"""Pages baked again from live data on the lab (the shop, deployed by `deploykit up`): a product
changed through the API appears on the baked catalogue after `deploykit bake --now`, served by the
balancer with every clone stopped, with Cache-Control beside ETag and Last-Modified. A bake that
fails (its document store stopped) exits 1 with the reason and leaves the pages as they were,
with nothing half-made on any host. The balancer accepts the bake worker's key for its one
forced command only, and refuses pages that are not plain files with plain names.
"""

from __future__ import annotations

import http.cookiejar
import json
import shlex
import time
import urllib.request
import uuid
from typing import Any

import pytest
from conftest import LabShell, deploykit

pytestmark = pytest.mark.e2e

APP_HOSTS = ("app1", "app2", "app3")
PRODUCT = "1"
KEY = "/etc/deploykit-bake/shop/id_ed25519"
KNOWN_HOSTS = "/etc/deploykit-bake/shop/known_hosts"


def bake_now() -> tuple[int, dict[str, Any]]:
    proc = deploykit("bake", "--now", "--json", timeout=300)
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


def page(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return response.status, headers, response.read().decode()


def rename_product(shop: str, name: str) -> None:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )

    def call(method: str, path: str, body: Any) -> int:
        request = urllib.request.Request(
            shop + path, data=json.dumps(body).encode(), method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with opener.open(request, timeout=10) as response:
            return int(response.status)

    assert call("POST", "/login", {"user": "baker"}) == 200
    assert call("POST", f"/products/{PRODUCT}", {"name": name}) == 200


def leftovers(lab_shell: LabShell) -> dict[str, str]:
    """Half-made bakes (.partial) on the bake worker and the balancer, and whether a bake runs."""
    return {
        "worker1": lab_shell.run("worker1", "ls -A /srv/shop/bakes | grep partial || true"),
        "lb1": lab_shell.run("lb1", "ls -A /srv/shop/static/bakes | grep partial || true"),
        "unit": lab_shell.run("worker1", "systemctl is-active shop-bake.service || true"),
    }


def test_a_changed_product_is_on_the_baked_catalogue_served_without_clones(
    shop: str, lab_shell: LabShell
) -> None:
    name = f"Sencha {uuid.uuid4().hex[:8]}"
    rename_product(shop, name)
    _, _, before = page(shop + "/catalogue/")
    assert name not in before  # baked pages are not the app's: the change is not there yet

    rc, answer = bake_now()
    record = answer["record"]
    print(
        f"bake {record.get('bake_id')}: {record.get('pages')} page(s) in {record.get('seconds')} s"
    )
    assert rc == 0, answer
    assert record["outcome"] == "published", record
    assert record["balancers"] == {lab_shell.addresses["lb1"]: "published"}, record
    assert "/catalogue/" in record["paths"], record
    assert answer["next_run"], answer  # the timer is on (the default schedule)

    try:
        for host in APP_HOSTS:
            lab_shell.run(host, "systemctl stop shop-web")
        status, headers, body = page(shop + "/catalogue/")
        assert status == 200
        assert headers["x-served-by"] == "static", headers
        assert name in body, "the renamed product is not on the baked catalogue"
        assert headers["cache-control"] == "public, max-age=300", headers
        assert headers.get("etag") and headers.get("last-modified"), headers
    finally:
        for host in APP_HOSTS:
            lab_shell.run(host, "systemctl start shop-web")
    assert leftovers(lab_shell) == {"worker1": "", "lb1": "", "unit": "inactive"}


def test_a_failed_bake_keeps_the_pages_and_says_why(shop: str, lab_shell: LabShell) -> None:
    _, headers_before, before = page(shop + "/catalogue/")
    lab_shell.run("db1", "systemctl stop postgresql@15-main")
    try:
        rc, answer = bake_now()
    finally:
        lab_shell.run("db1", "systemctl start postgresql@15-main")
    record = answer["record"]
    print(f"failed bake: exit {rc}: {record.get('reason')}")
    assert rc == 1, answer
    assert record["outcome"] == "failed", record
    assert "shop.bake:bake failed" in record["reason"], record
    assert "every balancer keeps the pages it served" in record["reason"], record
    _, headers_after, after = page(shop + "/catalogue/")
    assert (after, headers_after["etag"]) == (before, headers_before["etag"])
    assert leftovers(lab_shell) == {"worker1": "", "lb1": "", "unit": "failed"}

    # With the document store back, the next bake publishes again.
    deadline = time.monotonic() + 60
    while not lab_shell.succeeds("db1", "pg_isready -q"):
        assert time.monotonic() < deadline, "PostgreSQL is not back within 60 s"
        time.sleep(1)
    rc, answer = bake_now()
    assert rc == 0 and answer["record"]["outcome"] == "published", answer


def test_the_balancer_runs_only_the_pages_receiver_for_the_bake_key(lab_shell: LabShell) -> None:
    lb = lab_shell.addresses["lb1"]
    ssh = (
        f"runuser -u deploykit -- ssh -i {KEY} -o UserKnownHostsFile={KNOWN_HOSTS} "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes root@{lb}"
    )
    # Any other command: the forced command answers it, and refuses it.
    refused = lab_shell.run("worker1", f"{ssh} 'cat /etc/shadow' 2>&1; echo exit=$?")
    assert "not a request deploykit-pages receive answers" in refused, refused
    assert refused.endswith("exit=1"), refused

    # Pages that would leave their directory, or are not plain files, are refused whole.
    crafted = (
        "import io, sys, tarfile\n"
        "out = tarfile.open(fileobj=sys.stdout.buffer, mode='w|')\n"
        "for name, kind in (('index.html', tarfile.REGTYPE), (sys.argv[1], sys.argv[2])):\n"
        "    info = tarfile.TarInfo(name); info.type = kind.encode()\n"
        "    info.linkname = '/etc/shadow' if kind == '2' else ''\n"
        "    data = b'<p>x</p>' if kind == '0' else b''; info.size = len(data)\n"
        "    out.addfile(info, io.BytesIO(data))\n"
        "out.close()\n"
    )
    for evil, kind in (("../escaped.html", "0"), ("page.html", "2"), (".hidden", "0")):
        bake_id = f"20261204T000000.000Z-test{uuid.uuid4().hex[:8]}"
        command = (
            f"python3 -c {shlex.quote(crafted)} {shlex.quote(evil)} {kind} "
            f"| {ssh} 'stage {bake_id}' 2>&1; echo exit=$?"
        )
        answer = lab_shell.run("worker1", command)
        assert answer.endswith("exit=1"), (evil, answer)
        assert lab_shell.run("lb1", f"ls -A /srv/shop/static/bakes | grep {bake_id} || true") == ""
    assert lab_shell.run("lb1", "ls /srv/shop/static/escaped.html 2>&1 || true").endswith(
        "No such file or directory"
    )
