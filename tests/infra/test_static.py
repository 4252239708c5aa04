"""Testinfra checks of the static role (and the haproxy role's static backend), run by the molecule
scenario ``static``.

One balancer, ``static-lb``: HAProxy with ``haproxy_static_backend_port: 8081`` and the static role
publishing the fixture application in molecule/static/bakery (pages in sub-directories, a name with
a space). The inventory's only app clone, ``static-app-gone``, does not exist: HAProxy's app backend
is down for the whole scenario, and every baked page must be served anyway. Requests go to the
balancer's own address, port 80 (the public frontend).
"""

from __future__ import annotations

import time

import pytest
from lab_probes import http_request, ipv4, only_in_scenario, scenario_host

SCENARIO = "static"

pytestmark = only_in_scenario(SCENARIO)

LB = "static-lb"
APP = "/srv/bakery"
PATHS_FILE = "/etc/haproxy/baked-paths.lst"
# URL path -> the baked file that answers it.
PAGES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/catalogue/": "catalogue/index.html",
    "/catalogue/index.html": "catalogue/index.html",
    "/assets/site.css": "assets/site.css",
    "/about%20us.html": "about us.html",
}


@pytest.fixture(scope="module")
def lb(request):
    return scenario_host(request, LB)


@pytest.fixture(scope="module")
def address(lb) -> str:
    return ipv4(lb)


@pytest.fixture(scope="module")
def release(lb) -> str:
    return lb.run("readlink %s/static/current", APP).stdout.strip().rsplit("/", 1)[1]


def wait_for(lb, url: str, status: int, deadline: float = 15.0) -> dict:
    end = time.monotonic() + deadline
    while True:
        answer = http_request(lb, url)
        if answer.get("status") == status or time.monotonic() > end:
            return answer
        time.sleep(0.5)


@pytest.fixture
def nginx_up(lb, address):
    def restore():
        lb.run("systemctl start nginx.service")
        assert wait_for(lb, f"http://{address}/", 200)["headers"]["x-served-by"] == "static"

    restore()
    yield
    restore()


def test_layout(lb, release):
    assert lb.run("readlink %s/static/current", APP).stdout.strip() == f"releases/{release}"
    published = f"{APP}/static/releases/{release}"
    for page in set(PAGES.values()):
        copy = lb.file(f"{published}/{page}")
        original = lb.file(f"{APP}/releases/{release}/baked/{page}")
        assert copy.is_file and copy.user == "root" and copy.mode == 0o644
        assert copy.sha256sum == original.sha256sum
    # The balancer runs no application code: no virtualenv, no current release of the app.
    assert not lb.file(f"{APP}/releases/{release}/venv").exists
    assert not lb.file(f"{APP}/current").exists
    assert (
        lb.run("%s verify %s/releases/%s", "/usr/local/libexec/deploykit-release", APP, release).rc
        == 0
    )


def test_paths_list(lb):
    listed = [
        line
        for line in lb.file(PATHS_FILE).content_string.splitlines()
        if line and not line.startswith("#")
    ]
    assert listed == sorted(PAGES)


def test_haproxy_routes_baked_pages_to_nginx(lb):
    config = lb.file("/etc/haproxy/haproxy.cfg").content_string
    for line in [
        f"acl baked_page path -f {PATHS_FILE}",
        "use_backend static if { method GET HEAD } baked_page { nbsrv(static) gt 0 }",
        "backend static",
        "server static 127.0.0.1:8081 check inter 2s fall 2 rise 2",
    ]:
        assert line in config, line


def test_nginx_serves_on_loopback_only(lb):
    assert lb.service("nginx").is_running
    assert lb.service("nginx").is_enabled
    listening = [line.split()[3] for line in lb.run("ss -Hltn").stdout.splitlines()]
    assert "127.0.0.1:8081" in listening
    assert [a for a in listening if a.endswith(":8081")] == ["127.0.0.1:8081"]
    # HAProxy keeps port 80 (nginx's default site, which would take it, is gone).
    assert "0.0.0.0:80" in listening
    assert not lb.file("/etc/nginx/sites-enabled/default").exists
    assert lb.run("nginx -t").rc == 0
    # The root names no application: a link the publishing switches to the app's static/current.
    assert "root /var/lib/deploykit-pages;" in lb.file("/etc/nginx/nginx.conf").content_string
    assert lb.run("readlink /var/lib/deploykit-pages").stdout.strip() == f"{APP}/static/current"


def test_every_baked_page_is_served_with_no_app_clone(lb, address, release, nginx_up):
    # The app backend's only server does not exist.
    assert http_request(lb, f"http://{address}/healthz")["status"] == 503
    for path, page in PAGES.items():
        expected = lb.file(f"{APP}/releases/{release}/baked/{page}").content_string
        answer = http_request(lb, f"http://{address}{path}")
        assert answer["status"] == 200, (path, answer)
        assert answer["headers"]["x-served-by"] == "static", path
        assert answer["body"] == expected, path
        # A CDN may keep it for static_cache_max_age, then revalidate it (ETag, Last-Modified).
        assert answer["headers"]["cache-control"] == "public, max-age=300", path
        assert answer["headers"].get("etag") and answer["headers"].get("last-modified"), path
        head = http_request(lb, f"http://{address}{path}", method="HEAD")
        assert head["status"] == 200, (path, head)
    assert (
        "text/css"
        in http_request(lb, f"http://{address}/assets/site.css")["headers"]["content-type"]
    )


def test_the_pages_receiver_is_installed_for_root_only(lb):
    # The bake worker's one command here (deploykit-pages receive): root's, not writable by others.
    helper = lb.file("/usr/local/libexec/deploykit-pages")
    assert (helper.user, helper.group, helper.mode) == ("root", "root", 0o755)
    answer = lb.run(
        "SSH_ORIGINAL_COMMAND='rm -rf /' /usr/local/libexec/deploykit-pages receive /srv/x"
    )
    assert answer.rc == 1 and "not a request" in answer.stderr, answer.stderr


def test_other_requests_go_to_the_app(lb, address, nginx_up):
    # Not listed, not GET/HEAD, or a hidden file: the app's (down: 503), never nginx's.
    for path, method in [
        ("/catalogue", "GET"),
        ("/", "POST"),
        ("/.deploykit-release.json", "GET"),
        ("/index.html?x=1", "DELETE"),
    ]:
        answer = http_request(lb, f"http://{address}{path}", method=method)
        assert answer["status"] == 503, (path, method, answer)
        assert answer["headers"].get("x-served-by") != "static"


def test_nginx_down_sends_baked_pages_to_the_app(lb, address, nginx_up):
    assert lb.run("systemctl stop nginx.service").rc == 0
    answer = wait_for(lb, f"http://{address}/", 503)
    assert answer["status"] == 503, answer  # the app backend (down here), not a broken static one
    assert lb.run("systemctl start nginx.service").rc == 0
    assert wait_for(lb, f"http://{address}/", 200)["status"] == 200
