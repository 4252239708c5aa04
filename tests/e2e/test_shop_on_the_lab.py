"""`deploykit up` on the lab, then the four principles checked through the balancer, as a user
sees them: clones sharing sessions, whole objects cached, slow work done by a worker, baked pages
served without any app clone; and every node running the same release."""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import LabShell

pytestmark = pytest.mark.e2e

APP_HOSTS = ("app1", "app2", "app3")


class Browser:
    """One user: a cookie jar, JSON in and out, the clone that answered."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.headers, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.headers, json.loads(error.read() or b"null")


def test_a_login_holds_on_every_clone(shop: str) -> None:
    user = Browser(shop)
    status, _, _ = user.call("POST", "/login", {"user": "ada"})
    assert status == 200
    clones = set()
    for _ in range(30):
        status, headers, body = user.call("GET", "/me")
        assert status == 200
        assert body["user"] == "ada"
        clones.add(headers["X-Served-By"])
    assert len(clones) >= 2, clones


def test_a_cached_object_is_a_hit_then_a_miss_after_it_changes(shop: str) -> None:
    user = Browser(shop)
    user.call("POST", "/login", {"user": "grace"})
    user.call("GET", "/products/2")  # warm the cache, whatever its state
    status, headers, before = user.call("GET", "/products/2")
    assert (status, headers["X-Cache"]) == (200, "hit")
    status, _, _ = user.call("POST", "/products/2", {"stock": before["stock"] + 1})
    assert status == 200
    status, headers, after = user.call("GET", "/products/2")
    assert (status, headers["X-Cache"]) == (200, "miss")
    assert after["stock"] == before["stock"] + 1


def test_a_slow_job_is_done_by_a_worker(shop: str) -> None:
    user = Browser(shop)
    status, _, job = user.call("POST", "/reports")
    assert status == 202
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status, _, report = user.call("GET", job["url"])
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, f"the report job is not done after 90 s: {report}"
    assert report["status"] == "done", report
    assert report["result"]["by_category"]


def test_every_node_runs_the_same_release(shop: str, lab_shell: LabShell) -> None:
    read = (
        'python3 -c \'import json, os; r = os.path.realpath("/srv/shop/current"); '
        'm = json.load(open(r + "/manifest.json")); print(m["release_id"], m["checksum"])\''
    )
    seen = {host: lab_shell.run(host, read) for host in (*APP_HOSTS, "worker1")}
    assert len(set(seen.values())) == 1, seen
    release_id = next(iter(seen.values())).split()[0]
    for _ in range(6):
        status, _, health = Browser(shop).call("GET", "/healthz")
        assert (status, health["release"]) == (200, release_id)


def test_a_baked_page_is_served_with_every_clone_stopped(shop: str, lab_shell: LabShell) -> None:
    try:
        for host in APP_HOSTS:
            lab_shell.run(host, "systemctl stop shop-web")
        for path in ("/", "/catalogue/"):
            request = urllib.request.Request(shop + path)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                assert response.headers["X-Served-By"] == "static"
                assert b"<html" in response.read().lower()
    finally:
        for host in APP_HOSTS:
            lab_shell.run(host, "systemctl start shop-web")
