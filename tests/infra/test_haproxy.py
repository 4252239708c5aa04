"""Testinfra checks of the haproxy role, run by the molecule scenario ``haproxy``.

The scenario has three hosts:

* ``haproxy-lb`` (lb): HAProxy, TLS from a self-signed certificate (given as PEM content);
* ``haproxy-app1`` (app): a tiny HTTP app on 8000 (``/`` answers the host's name, ``/healthz``
  200, or 503 while ``/run/molecule-app.unhealthy`` exists), see prepare.yml;
* ``haproxy-app2`` (app, monitoring): the same app; ``monitoring`` is the group admitted to the
  stats port.

Every request is made from another container (outside the balancer). Changes of state (a dead
clone, a failing health check, a drain) are polled for on the balancer itself, in one remote
command with a deadline, and always undone by a fixture, whatever the outcome of the test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import testinfra
import yaml

SCENARIO = "haproxy"

pytestmark = pytest.mark.skipif(
    os.environ.get("MOLECULE_SCENARIO_NAME", SCENARIO) != SCENARIO,
    reason="hosts of the molecule scenario 'haproxy' only",
)

ROOT = Path(__file__).resolve().parents[2]
ROLE_DEFAULTS = yaml.safe_load((ROOT / "roles/haproxy/defaults/main.yml").read_text())
SECRETS = yaml.safe_load((ROOT / "molecule/haproxy/group_vars/lb.yml").read_text())

LB, APP1, APP2 = "haproxy-lb", "haproxy-app1", "haproxy-app2"
CLONES = {APP1, APP2}
USER = ROLE_DEFAULTS["haproxy_stats_user"]
PASSWORD = SECRETS["haproxy_stats_password"]
STATS_PORT = ROLE_DEFAULTS["haproxy_stats_port"]
SOCKET = "/run/haproxy/admin.sock"
STATE_FILE = "/var/lib/haproxy/server-state"
UNHEALTHY_FLAG = "/run/molecule-app.unhealthy"

# Runs on a client: N requests to a URL, <interval> seconds apart (certificate not verified,
# redirects not followed), optionally with basic auth; prints a JSON list of
# {status, headers, body} or {error}.
CLIENT = r"""
import base64, json, ssl, sys, time, urllib.error, urllib.request
url, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
auth = sys.argv[4] if len(sys.argv) > 4 else None

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

opener = urllib.request.build_opener(
    urllib.request.HTTPSHandler(context=ssl._create_unverified_context()), NoRedirect
)
results = []
for number in range(count):
    if number:
        time.sleep(interval)
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    try:
        response = opener.open(request, timeout=5)
        status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    except OSError as error:
        results.append({"error": str(error)})
        continue
    results.append({
        "status": status,
        "headers": {k.lower(): v for k, v in headers.items()},
        "body": body.decode(errors="replace"),
    })
print(json.dumps(results))
"""

# Runs on the balancer: polls the runtime API until server <backend>/<server> has one of the
# wanted statuses (show stat: UP, DOWN, DRAIN, MAINT, "UP 1/2", ...), optionally only once the
# worker's pid differs from <not_pid> (a reload happened). Prints JSON: the status and pid last
# seen, the wall-clock time it was seen, and whether it was wanted.
WATCH = r"""
import csv, io, json, socket, sys, time
sock, backend, server, wanted, not_pid, deadline = sys.argv[1:7]
wanted, deadline = wanted.split(","), time.monotonic() + float(deadline)

def cli(command):
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(2)
    conn.connect(sock)
    conn.sendall(command.encode() + b"\n")
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    return data.decode()

def observe():
    info = cli("show info").splitlines()
    pid = next(line.split(":", 1)[1].strip() for line in info if line.startswith("Pid:"))
    rows = csv.DictReader(io.StringIO(cli("show stat").lstrip("# ")))
    mine = (r["status"] for r in rows if (r["pxname"], r["svname"]) == (backend, server))
    return pid, next(mine, None)

seen = {"status": None, "pid": None, "error": None}
while True:
    try:
        seen["pid"], seen["status"] = observe()
        seen["error"] = None
    except (OSError, StopIteration) as error:
        seen["error"] = repr(error)
    seen["at"] = time.time()
    seen["ok"] = seen["status"] in wanted and seen["pid"] is not None and seen["pid"] != not_pid
    if seen["ok"] or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(json.dumps(seen))
"""

# Runs on a client: connect to (address, port) and say how it went.
KNOCK = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print("error: %s" % error)
"""


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
        for name in (LB, APP1, APP2)
    }


def address_of(host) -> str:
    """A host's address on the scenario network: the one its default route leaves from."""
    addresses = [a for a in host.interface.default().addresses if "." in a]
    assert addresses, "no IPv4 address on the default interface"
    return addresses[0]


@pytest.fixture(scope="module")
def lb_address(lab) -> str:
    return address_of(lab[LB])


def requests(client, url: str, count: int = 1, auth: str | None = None) -> list[dict]:
    args = [url, str(count), "0"] + ([auth] if auth is not None else [])
    result = client.run("python3 -c %s" + " %s" * len(args), CLIENT, *args)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def knock(source, address: str, port: int, timeout: float = 3.0) -> str:
    result = source.run("python3 -c %s %s %s %s", KNOCK, address, str(port), str(timeout))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def runtime_api(lb, command: str) -> str:
    """One command through the admin socket, with socat (as deploys and the role do)."""
    result = lb.run("echo %s | socat -t 5 stdio unix-connect:%s", command, SOCKET)
    assert result.rc == 0, result.stderr
    return result.stdout


def worker_pid(lb) -> str:
    info = runtime_api(lb, "show info")
    return next(
        line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:")
    )


def watch(lb, server: str, wanted: str, deadline: float, not_pid: str = "") -> dict:
    """Poll (on the balancer) until app/<server> has a wanted status; the last observation."""
    result = lb.run(
        "python3 -c %s %s app %s %s %s %s",
        WATCH,
        SOCKET,
        server,
        wanted,
        not_pid or "-",
        str(deadline),
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def admin_state(lb, server: str) -> int:
    """srv_admin_state of app/<server> in the server-state file (version 1 format)."""
    lines = lb.file(STATE_FILE).content_string.splitlines()
    assert lines and lines[0] == "1", lines[:2]
    for line in lines[1:]:
        fields = line.split()
        if (
            not line.startswith("#")
            and len(fields) > 6
            and fields[1] == "app"
            and fields[3] == server
        ):
            return int(fields[6])
    raise AssertionError(f"app/{server} is not in {STATE_FILE}")


def served_by(responses: list[dict]) -> set[str]:
    """The clones that answered; every response must be a 200 whose body names its X-Served-By."""
    for response in responses:
        assert response.get("status") == 200, response
        assert response["body"].strip() == response["headers"]["x-served-by"], response
    return {response["headers"]["x-served-by"] for response in responses}


@pytest.fixture
def both_clones_up(lab):
    """Both clones healthy and ready before the test, and again after it, whatever happened."""

    def restore():
        for name in CLONES:
            lab[name].run("rm -f %s; systemctl start molecule-app.service", UNHEALTHY_FLAG)
            runtime_api(lab[LB], f"set server app/{name} state ready")
        for name in CLONES:
            seen = watch(lab[LB], name, "UP", deadline=15)
            assert seen["ok"], f"{name} is not back UP: {seen}"

    restore()
    yield
    restore()


# --- the service and its configuration ------------------------------------------------------------


def test_haproxy_26_is_installed_running_and_enabled(lab):
    lb = lab[LB]
    assert lb.package("haproxy").version.startswith("2.6.")
    assert lb.package("socat").is_installed
    service = lb.service("haproxy")
    assert service.is_running
    assert service.is_enabled


def test_master_worker_mode_and_state_saving_on_reload(lab):
    lb = lab[LB]
    commands = lb.run("ps -C haproxy -o args=").stdout
    assert "-Ws" in commands, commands
    unit = lb.run("systemctl cat haproxy.service").stdout
    assert "ExecReload=-/usr/local/sbin/haproxy-save-server-state" in unit
    assert "ExecStop=-/usr/local/sbin/haproxy-save-server-state" in unit
    assert "ExecStopPost=-/usr/local/sbin/haproxy-save-server-state --after-stop" in unit
    # The drop-in replaces Debian's reload: check, save the states, signal; in that order.
    reload = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecReload=")]
    programs = [command.split()[0] for command in reload[reload.index("") + 1 :]]
    assert programs == [
        "/usr/sbin/haproxy",
        "-/usr/local/sbin/haproxy-save-server-state",
        "/bin/kill",
    ]


def test_configuration_is_valid_and_private(lab):
    lb = lab[LB]
    check = lb.run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert check.rc == 0, check.stdout + check.stderr
    config = lb.file("/etc/haproxy/haproxy.cfg")
    assert config.user == "root"
    assert config.group == "haproxy"
    assert config.mode == 0o640
    assert config.content_string.startswith("#")


def test_backend_is_built_from_the_app_group(lab):
    config = lab[LB].file("/etc/haproxy/haproxy.cfg").content_string
    port = ROLE_DEFAULTS["haproxy_backend_port"]
    for name in CLONES:
        assert f"server {name} {address_of(lab[name])}:{port}" in config
    for line in [
        "balance roundrobin",
        "option httpchk",
        f"http-check send meth GET uri {ROLE_DEFAULTS['haproxy_backend_health_path']}",
        "http-check expect status 200",
        "default-server check inter 500 fall 2 rise 2",
        "timeout check 2s",
        "option redispatch",
        "retries 3",
        "http-response set-header X-Served-By %s",
        "server-state-file /var/lib/haproxy/server-state",
        "load-server-state-from-file global",
        f"stats socket {SOCKET} mode 660 level admin expose-fd listeners",
    ]:
        assert line in config, line


def test_tls_certificate_is_private(lab):
    pem = lab[LB].file("/etc/haproxy/certs/deploykit.pem")
    assert pem.user == "root"
    assert pem.group == "haproxy"
    assert pem.mode == 0o640
    assert "PRIVATE KEY" in pem.content_string


def test_listeners(lab, lb_address):
    """Public ports on every address, stats on the private address only, no other TCP port."""
    listening = lab[LB].run("ss -Hltn").stdout.splitlines()
    # ss cannot name HAProxy's sockets here (its processes are not dumpable, and root in the
    # container lacks CAP_SYS_PTRACE), so: every TCP listener but sshd's and Docker's DNS.
    others = {"0.0.0.0:22", "[::]:22"}
    local = sorted(
        address
        for address in (line.split()[3] for line in listening)
        if address not in others and not address.startswith("127.0.0.11:")
    )
    assert local == sorted(["0.0.0.0:80", "0.0.0.0:443", f"{lb_address}:{STATS_PORT}"]), listening


def test_runtime_api_is_a_local_unix_socket(lab):
    lb = lab[LB]
    socket_file = lb.file(SOCKET)
    assert socket_file.is_socket
    assert socket_file.mode == 0o660
    assert socket_file.group == "haproxy"
    assert "Name: HAProxy" in runtime_api(lb, "show info")
    # The socket is not reachable over TCP: the only TCP listeners are checked in test_listeners.


def test_firewall_declaration(lab):
    lb = lab[LB]
    declaration = lb.file("/etc/nftables.d/haproxy.nft").content_string
    assert "tcp dport { 80, 443 } accept" in declaration
    assert (
        f"ip saddr {{ {address_of(lab[APP2])} }} tcp dport {{ {STATS_PORT} }} accept" in declaration
    )
    assert address_of(lab[APP1]) not in declaration


# --- traffic, from outside ------------------------------------------------------------------------


def test_requests_reach_both_clones(lab, lb_address, both_clones_up):
    responses = requests(lab[APP1], f"https://{lb_address}/", count=10)
    assert served_by(responses) == CLONES


def test_plain_http_redirects_to_https(lab, lb_address):
    [response] = requests(lab[APP1], f"http://{lb_address}/some/page?x=1")
    assert response["status"] == 301, response
    assert response["headers"]["location"] == f"https://{lb_address}/some/page?x=1"


def test_stats_page_requires_the_password(lab, lb_address):
    monitor = lab[APP2]
    url = f"http://{lb_address}:{STATS_PORT}/stats"
    [anonymous] = requests(monitor, url)
    assert anonymous["status"] == 401
    assert anonymous["headers"]["www-authenticate"].startswith("Basic")
    [wrong] = requests(monitor, url, auth=f"{USER}:not-the-password")
    assert wrong["status"] == 401
    [allowed] = requests(monitor, url, auth=f"{USER}:{PASSWORD}")
    assert allowed["status"] == 200
    assert "Statistics Report" in allowed["body"]


def test_prometheus_metrics_require_the_password(lab, lb_address):
    monitor = lab[APP2]
    url = f"http://{lb_address}:{STATS_PORT}/metrics"
    [anonymous] = requests(monitor, url)
    assert anonymous["status"] == 401
    [metrics] = requests(monitor, url, auth=f"{USER}:{PASSWORD}")
    assert metrics["status"] == 200
    assert metrics["headers"]["content-type"].startswith("text/plain")
    assert "# TYPE haproxy_process_" in metrics["body"]
    for name in CLONES:
        assert f'haproxy_server_status{{proxy="app",server="{name}"' in metrics["body"]


def test_stats_port_is_dropped_for_other_groups(lab, lb_address):
    assert knock(lab[APP2], lb_address, STATS_PORT) == "open"
    assert knock(lab[APP1], lb_address, STATS_PORT) == "timeout"
    # The balancer itself reaches it (loopback traffic is admitted), on the private address only.
    assert knock(lab[LB], lb_address, STATS_PORT) == "open"
    assert knock(lab[LB], "127.0.0.1", STATS_PORT) == "refused"


# --- failures and drains -----------------------------------------------------------------------

WATCH_UNIT = "molecule-haproxy-watch"
WATCH_OUTPUT = "/run/molecule-haproxy-watch.json"
CLIENT_UNIT = "molecule-haproxy-client"
CLIENT_OUTPUT = "/run/molecule-haproxy-client.json"


def test_dead_clone_leaves_the_rotation_within_3s(lab, lb_address, both_clones_up):
    lb, app2 = lab[LB], lab[APP2]
    # The watcher runs on the balancer in the background, started before the clone dies, and
    # notes the wall-clock time it first sees the server DOWN (the containers share one clock).
    lb.run("rm -f %s; systemctl reset-failed %s", WATCH_OUTPUT, WATCH_UNIT)
    started = lb.run(
        "systemd-run --unit %s --collect --property StandardOutput=file:%s"
        " python3 -c %s %s app %s DOWN - 20",
        WATCH_UNIT,
        WATCH_OUTPUT,
        WATCH,
        SOCKET,
        APP2,
    )
    assert started.rc == 0, started.stderr
    stopped = app2.run(
        "python3 -c 'import time; print(time.time())' && systemctl stop molecule-app.service"
    )
    assert stopped.rc == 0, stopped.stderr
    died_at = float(stopped.stdout.split()[0])

    finished = lb.run(
        "timeout 30 sh -c 'while systemctl is-active -q %s; do sleep 0.2; done'; cat %s",
        WATCH_UNIT,
        WATCH_OUTPUT,
    )
    seen = json.loads(finished.stdout)
    assert seen["ok"], f"haproxy-app2 never went DOWN: {seen}"
    assert seen["at"] - died_at < 3.0, f"DOWN only after {seen['at'] - died_at:.1f} s"

    # The other clone serves every request.
    assert served_by(requests(lab[APP1], f"https://{lb_address}/", count=10)) == {APP1}

    app2.run("systemctl start molecule-app.service")
    back = watch(lb, APP2, "UP", deadline=10)
    assert back["ok"], f"haproxy-app2 did not come back UP: {back}"
    assert served_by(requests(lab[APP1], f"https://{lb_address}/", count=10)) == CLONES


def test_failing_health_check_takes_a_clone_out(lab, lb_address, both_clones_up):
    """/healthz answering 503 (while / still answers 200) is enough to leave the rotation."""
    lb, app1 = lab[LB], lab[APP1]
    app1.run("touch %s", UNHEALTHY_FLAG)
    down = watch(lb, APP1, "DOWN", deadline=5)
    assert down["ok"], f"haproxy-app1 stayed in the rotation with a failing /healthz: {down}"
    assert served_by(requests(lab[APP2], f"https://{lb_address}/", count=6)) == {APP2}
    app1.run("rm -f %s", UNHEALTHY_FLAG)
    up = watch(lb, APP1, "UP", deadline=10)
    assert up["ok"], up


def test_drain_survives_a_reload(lab, lb_address, both_clones_up):
    lb = lab[LB]
    runtime_api(lb, f"set server app/{APP1} state drain")
    drained = watch(lb, APP1, "DRAIN", deadline=5)
    assert drained["ok"], drained
    assert served_by(requests(lab[APP2], f"https://{lb_address}/", count=6)) == {APP2}

    before = worker_pid(lb)
    reload = lb.run("systemctl reload haproxy.service")
    assert reload.rc == 0, reload.stderr
    after = watch(lb, APP1, "DRAIN,UP", deadline=15, not_pid=before)
    assert after["ok"], f"no new worker after the reload: {after}"
    assert after["status"] == "DRAIN", f"the new worker lost the drain: {after}"
    # The file the new worker loaded: app/haproxy-app1 with the drain bit (0x08) of srv_admin_state.
    assert admin_state(lb, APP1) & 0x08, lb.file(STATE_FILE).content_string
    assert served_by(requests(lab[APP2], f"https://{lb_address}/", count=6)) == {APP2}

    # Back to ready; the next reload saves that too (a stale drain does not come back).
    runtime_api(lb, f"set server app/{APP1} state ready")
    before = worker_pid(lb)
    assert lb.run("systemctl reload haproxy.service").rc == 0
    ready = watch(lb, APP1, "UP,DRAIN", deadline=15, not_pid=before)
    assert ready["ok"] and ready["status"] == "UP", ready
    assert not admin_state(lb, APP1) & 0x08
    assert served_by(requests(lab[APP2], f"https://{lb_address}/", count=10)) == CLONES


def test_reload_answers_every_request(lab, lb_address, both_clones_up):
    """Requests keep being answered while HAProxy reloads (master-worker, sockets handed over)."""
    lb, client = lab[LB], lab[APP1]
    client.run("rm -f %s; systemctl reset-failed %s", CLIENT_OUTPUT, CLIENT_UNIT)
    # 80 requests, 50 ms apart (about 5 s), from the client in the background.
    started = client.run(
        "systemd-run --unit %s --collect --property StandardOutput=file:%s"
        " python3 -c %s %s 80 0.05",
        CLIENT_UNIT,
        CLIENT_OUTPUT,
        CLIENT,
        f"https://{lb_address}/",
    )
    assert started.rc == 0, started.stderr
    time.sleep(1)
    for _ in range(2):
        before = worker_pid(lb)
        assert lb.run("systemctl reload haproxy.service").rc == 0
        assert watch(lb, APP1, "UP", deadline=10, not_pid=before)["ok"]
    finished = client.run(
        "timeout 60 sh -c 'while systemctl is-active -q %s; do sleep 0.2; done'; cat %s",
        CLIENT_UNIT,
        CLIENT_OUTPUT,
    )
    responses = json.loads(finished.stdout)
    assert len(responses) == 80
    assert served_by(responses) == CLONES


def test_states_survive_a_restart_but_not_a_crash(lab, both_clones_up):
    """A clean restart keeps a drain (saved at stop); after a crash the saved states, possibly
    stale, are forgotten and the new process starts from the configuration (every server ready)."""
    lb = lab[LB]
    runtime_api(lb, f"set server app/{APP1} state drain")
    assert watch(lb, APP1, "DRAIN", deadline=5)["ok"]

    before = worker_pid(lb)
    assert lb.run("systemctl restart haproxy.service").rc == 0
    restarted = watch(lb, APP1, "DRAIN,UP", deadline=15, not_pid=before)
    assert restarted["ok"] and restarted["status"] == "DRAIN", restarted

    before = worker_pid(lb)
    assert lb.run("systemctl kill --signal KILL haproxy.service").rc == 0
    recovered = watch(lb, APP1, "DRAIN,UP", deadline=20, not_pid=before)
    assert recovered["ok"] and recovered["status"] == "UP", recovered
    assert lb.service("haproxy").is_running
