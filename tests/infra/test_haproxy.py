"""Testinfra checks of the haproxy role, run by the molecule scenario ``haproxy``.

The scenario has three hosts:

* ``haproxy-lb`` (lb): HAProxy, TLS from a self-signed certificate (given as PEM content);
* ``haproxy-app1`` (app): a tiny HTTP app on 8000 (``/`` answers the host's name, ``/healthz``
  200, or 503 while ``/run/molecule-app.unhealthy`` exists, ``/slow?seconds=N`` the host's name
  after N seconds), see prepare.yml;
* ``haproxy-app2`` (app, monitoring): the same app; ``monitoring`` is the group admitted to the
  stats port.

Every request is made from another container (outside the balancer). Changes of state (a dead
clone, a failing health check, a drain) are polled for on the balancer itself, in one remote
command with a deadline, and always undone by a fixture, whatever the outcome of the test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from pathlib import Path

import pytest
import yaml
from lab_probes import ipv4, knock, only_in_scenario, role_defaults, scenario_hosts

SCENARIO = "haproxy"

pytestmark = only_in_scenario(SCENARIO)

ROOT = Path(__file__).resolve().parents[2]
ROLE_DEFAULTS = role_defaults("haproxy")
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


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    return scenario_hosts(request, LB, APP1, APP2)


@pytest.fixture(scope="module")
def lb_address(lab) -> str:
    return ipv4(lab[LB])


def requests(client, url: str, count: int = 1, auth: str | None = None) -> list[dict]:
    args = [url, str(count), "0"] + ([auth] if auth is not None else [])
    result = client.run("python3 -c %s" + " %s" * len(args), CLIENT, *args)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


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


def test_maintenance_mode_files_are_roots_and_off(lab, lb_address, both_clones_up):
    """Maintenance mode's state and allowed networks: created off, root's (HAProxy only reads
    them), and off means the app answers."""
    lb = lab[LB]
    for path in ("/etc/haproxy/maintenance.map", "/etc/haproxy/maintenance-allow.acl"):
        state = lb.file(path)
        assert (state.user, state.group, state.mode) == ("root", "root", 0o644), path
    assert "state off" in lb.file("/etc/haproxy/maintenance.map").content_string
    assert "state off" in runtime_api(lb, "show map /etc/haproxy/maintenance.map")
    assert served_by(requests(lab[APP1], f"https://{lb_address}/", count=4)) == CLONES


def test_backend_is_built_from_the_app_group(lab):
    config = lab[LB].file("/etc/haproxy/haproxy.cfg").content_string
    port = ROLE_DEFAULTS["haproxy_backend_port"]
    for name in CLONES:
        assert f"server {name} {ipv4(lab[name])}:{port}" in config
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
    assert f"ip saddr {{ {ipv4(lab[APP2])} }} tcp dport {{ {STATS_PORT} }} accept" in declaration
    assert ipv4(lab[APP1]) not in declaration


# --- traffic, from outside ------------------------------------------------------------------------


def test_requests_reach_both_clones(lab, lb_address, both_clones_up):
    responses = requests(lab[APP1], f"https://{lb_address}/", count=10)
    assert served_by(responses) == CLONES


# Runs on a client: one GET with the given headers (a client forging its address), certificate
# not verified; prints the JSON body (the stand-in app's /forwarded: what it received).
FORGING_CLIENT = r"""
import json, ssl, sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
context = ssl._create_unverified_context()
with urllib.request.urlopen(request, timeout=5, context=context) as response:
    print(json.dumps({
        "status": response.status,
        "served_by": response.headers["X-Served-By"],
        "received": json.loads(response.read()),
    }))
"""


def test_a_forged_client_address_never_reaches_the_app(lab, lb_address, both_clones_up):
    """A client that sends its own X-Forwarded-For (or Forwarded, X-Real-IP) to the balancer: the
    app receives one X-Forwarded-For, the address the balancer saw, and none of the forged ones.
    (Plain HTTP never reaches a backend: it is redirected, test_plain_http_redirects_to_https.)"""
    client = lab[APP1]
    forged = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6"}
    seen_by = set()
    for _ in range(4):  # both clones (round robin)
        result = client.run(
            "python3 -c %s %s %s",
            FORGING_CLIENT,
            f"https://{lb_address}/forwarded",
            json.dumps(forged),
        )
        assert result.rc == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["status"] == 200, answer
        assert answer["received"] == {
            "X-Forwarded-For": [ipv4(client)],
            "Forwarded": [],
            "X-Real-IP": [],
        }, answer
        seen_by.add(answer["served_by"])
    assert seen_by == CLONES


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

    seen = json.loads(output_when_done(lb, WATCH_UNIT, WATCH_OUTPUT, 30))
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
    time.sleep(1)  # a second of the client's requests before the first reload
    for _ in range(2):
        before = worker_pid(lb)
        assert lb.run("systemctl reload haproxy.service").rc == 0
        assert watch(lb, APP1, "UP", deadline=10, not_pid=before)["ok"]
    # The reloads happened under the client's traffic only if it is still sending: say so if not.
    still = client.run("systemctl is-active -q %s", CLIENT_UNIT)
    assert still.rc == 0, "the client had finished before the reloads were done: nothing proved"
    responses = json.loads(output_when_done(client, CLIENT_UNIT, CLIENT_OUTPUT, 60))
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


# --- the runtime-API helper (deploys drive HAProxy through it) -----------------------------------

HELPER = "/usr/local/libexec/deploykit-haproxy"
HELPER_SOURCE = ROOT / "roles/haproxy/files/deploykit-haproxy"
SERVER_FIELDS = {
    "backend",
    "server",
    "address",
    "status",
    "admin",
    "operational",
    "sessions",
    "check",
    "check_detail",
    "weight",
}
SLOW_UNIT = "molecule-haproxy-slow"
SLOW_OUTPUT = "/run/molecule-haproxy-slow.json"

# Runs on the balancer: the helper with the given arguments, timed there (not across the SSH round
# trip). With a first argument BACKEND/SERVER instead of "-", only once the helper sees a session
# on that server (polled every 50 ms, 10 s at most). Prints JSON {rc, stdout, stderr, elapsed,
# busy (the sessions seen, or null)}.
TIMED = r"""
import json, subprocess, sys, time
busy_on, helper, args = sys.argv[1], sys.argv[2], sys.argv[3:]
busy = None
if busy_on != "-":
    backend, server = busy_on.split("/")
    deadline = time.monotonic() + 10
    while True:
        seen = subprocess.run([helper, "state", backend, server], capture_output=True, text=True)
        busy = json.loads(seen.stdout)["sessions"] if seen.returncode == 0 else None
        if busy or time.monotonic() > deadline:
            break
        time.sleep(0.05)
started = time.monotonic()
done = subprocess.run([helper, *args], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                  "elapsed": time.monotonic() - started, "busy": busy}))
"""

# Runs on a client: <count> requests to a URL at the same time; prints a JSON list of
# {status, served_by} or {error}.
CONCURRENT_CLIENT = r"""
import json, ssl, sys, threading, urllib.error, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
context = ssl._create_unverified_context()
results = []

def fetch():
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as answer:
            results.append({"status": answer.status, "served_by": answer.headers["X-Served-By"]})
    except urllib.error.HTTPError as error:
        results.append({"status": error.code, "served_by": error.headers["X-Served-By"]})
    except OSError as error:
        results.append({"error": str(error)})

threads = [threading.Thread(target=fetch) for _ in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""


def helper(lb, *args: str, busy_on: str = "-") -> dict:
    """Run the helper on the balancer: {rc, stdout, stderr, elapsed, busy, json (on success)}."""
    result = lb.run("python3 -c %s %s %s" + " %s" * len(args), TIMED, busy_on, HELPER, *args)
    assert result.rc == 0, result.stderr
    run = json.loads(result.stdout)
    run["json"] = json.loads(run["stdout"]) if run["rc"] == 0 else None
    return run


def failed_in_one_line(run: dict, status: int) -> str:
    """The helper's contract for a failure: nothing on stdout, one line on stderr."""
    assert run["rc"] == status, run
    assert run["stdout"] == "", run
    lines = run["stderr"].splitlines()
    assert len(lines) == 1, run
    return lines[0]


def stat_field(lb, server: str, field: str) -> str:
    """One column of app/<server>'s row in `show stat`."""
    rows = csv.DictReader(io.StringIO(runtime_api(lb, "show stat").removeprefix("# ")))
    return next(row[field] for row in rows if (row["pxname"], row["svname"]) == ("app", server))


def start_in_background(client, unit: str, output: str, script: str, *args: str) -> None:
    client.run("rm -f %s; systemctl reset-failed %s", output, unit)
    started = client.run(
        "systemd-run --unit %s --collect --property StandardOutput=file:%s python3 -c %s"
        + " %s" * len(args),
        unit,
        output,
        script,
        *args,
    )
    assert started.rc == 0, started.stderr


def output_when_done(host, unit: str, output: str, seconds: int) -> str:
    """What a background unit wrote to OUTPUT, once it has finished. Fails, saying how long it
    waited, when the unit is still active after SECONDS (its output would be partial)."""
    waited = host.run(
        "timeout %s sh -c 'while systemctl is-active -q %s; do sleep 0.2; done'", str(seconds), unit
    )
    assert waited.rc == 0, f"{unit} still running after {seconds} s (timeout exit {waited.rc})"
    read = host.run("cat %s", output)
    assert read.rc == 0, read.stderr
    return read.stdout


def background_output(client, unit: str, output: str) -> list[dict]:
    return json.loads(output_when_done(client, unit, output, 60))


def test_helper_is_installed_root_owned_0755(lab):
    installed = lab[LB].file(HELPER)
    assert installed.is_file
    assert installed.user == "root"
    assert installed.group == "root"
    assert installed.mode == 0o755
    assert installed.sha256sum == hashlib.sha256(HELPER_SOURCE.read_bytes()).hexdigest()
    assert installed.content_string.startswith("#!/usr/bin/python3\n")


def test_runtime_api_is_not_on_the_network(lab):
    """Every socket HAProxy's CLI listens on is a unix socket (or the master's socketpair):
    no TCP listener serves the runtime API."""
    lb = lab[LB]
    sockets = [
        line.split()[0]
        for line in runtime_api(lb, "show cli sockets").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert f"unix@{SOCKET}" in sockets, sockets
    assert all(s.startswith(("unix@", "sockpair@")) for s in sockets), sockets
    config = lb.file("/etc/haproxy/haproxy.cfg").content_string
    lines = [line.split() for line in config.splitlines()]
    binds = [fields[2] for fields in lines if fields[:2] == ["stats", "socket"]]
    assert binds == [SOCKET], binds


def test_helper_lists_both_servers_up(lab, both_clones_up):
    lb = lab[LB]
    run = helper(lb, "servers")
    assert run["rc"] == 0, run
    servers = run["json"]["servers"]
    # Only servers: no FRONTEND or BACKEND rows, nothing of the stats frontend.
    assert {(s["backend"], s["server"]) for s in servers} == {("app", APP1), ("app", APP2)}
    for server in servers:
        assert set(server) == SERVER_FIELDS, server
        port = ROLE_DEFAULTS["haproxy_backend_port"]
        assert server["address"] == f"{ipv4(lab[server['server']])}:{port}"
        assert server["status"] == "UP"
        assert server["admin"] == "ready"
        assert server["operational"] == "up"
        assert server["sessions"] == 0
        assert server["check"] == "L7OK"
        assert "(code 200)" in server["check_detail"], server
        assert server["weight"] == 1
    assert helper(lb, "servers", "--backend", "app")["json"]["servers"] == servers
    one = helper(lb, "--socket", SOCKET, "state", "app", APP1)
    assert one["rc"] == 0, one
    assert one["json"] == next(s for s in servers if s["server"] == APP1)


# Runs on the balancer: the helper's `servers`, <count> times in one process (fast enough to meet
# the few ms of each 500 ms check interval during which a check is in progress). Prints a JSON
# list of the distinct outputs, with how often each was printed.
REPEATED_SERVERS = r"""
import collections, contextlib, importlib.machinery, importlib.util, io, json, sys
path, count = sys.argv[1], int(sys.argv[2])
loader = importlib.machinery.SourceFileLoader("helper", path)
helper = importlib.util.module_from_spec(importlib.util.spec_from_loader("helper", loader))
loader.exec_module(helper)
outputs = collections.Counter()
for _ in range(count):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = helper.main(["servers"])
    outputs[(rc, printed.getvalue())] += 1
print(json.dumps([{"rc": rc, "stdout": out, "times": n} for (rc, out), n in outputs.items()]))
"""


def test_helper_reads_agree_while_checks_run(lab, both_clones_up):
    """HAProxy resets the last check's code to 0 while the next check runs (about 2 ms of each
    500 ms interval; before the helper settled its reads, 3 of 1000 reads said "(code 0)", and
    CI once failed on it): repeated reads of a steady backend all print the same servers."""
    result = lab[LB].run("python3 -c %s %s 1000", REPEATED_SERVERS, HELPER)
    assert result.rc == 0, result.stderr
    outputs = json.loads(result.stdout)
    assert len(outputs) == 1, outputs
    assert outputs[0]["rc"] == 0
    for server in json.loads(outputs[0]["stdout"])["servers"]:
        assert server["check_detail"] == "Layer7 check passed (code 200)", server


def test_helper_drain_maint_then_ready(lab, lb_address, both_clones_up):
    lb = lab[LB]
    run = helper(lb, "drain", "app", APP1, "--maint", "--timeout", "10")
    assert run["rc"] == 0, run
    drained = run["json"]
    assert drained["server"] == APP1
    assert drained["status"] == "MAINT"
    assert drained["sessions_left"] == 0
    # Upper bounds here are generous: they tell "returned" from "hung", on a busy CI machine too.
    assert 0 <= drained["waited"] < 2.0, drained
    state = helper(lb, "state", "app", APP1)["json"]
    assert (state["admin"], state["operational"], state["check"]) == ("maint", "down", None), state
    assert served_by(requests(lab[APP2], f"https://{lb_address}/", count=8)) == {APP2}

    run = helper(lb, "ready", "app", APP1, "--timeout", "10")
    assert run["rc"] == 0, run
    ready = run["json"]
    assert ready["server"] == APP1
    assert ready["status"] == "UP"
    # Out of maint it waits for a check (inter 500 ms), and no longer than a few of them.
    assert 0 < ready["waited"] < 5.0, ready
    state = helper(lb, "state", "app", APP1)["json"]
    assert (state["status"], state["admin"], state["check"]) == ("UP", "ready", "L7OK"), state
    assert served_by(requests(lab[APP2], f"https://{lb_address}/", count=10)) == CLONES


def test_helper_drain_waits_for_requests_in_flight(lab, lb_address, both_clones_up):
    """Four 4-second requests at once (round robin: two on each clone); the drain of
    haproxy-app1 starts while its two are in flight, and returns when they have ended. (The drain
    starts once they are seen in flight, up to a few seconds late on a busy machine: the bounds
    of its wait allow for that.)"""
    lb, client = lab[LB], lab[APP2]
    url = f"https://{lb_address}/slow?seconds=4"
    start_in_background(client, SLOW_UNIT, SLOW_OUTPUT, CONCURRENT_CLIENT, url, "4")
    run = helper(lb, "drain", "app", APP1, "--timeout", "10", busy_on=f"app/{APP1}")
    assert run["busy"], f"no request in flight on {APP1}: {run}"
    assert run["rc"] == 0, run
    drained = run["json"]
    assert drained["sessions_left"] == 0, drained
    assert drained["status"] == "DRAIN"
    assert 0.5 < drained["waited"] < 9.0, drained
    responses = background_output(client, SLOW_UNIT, SLOW_OUTPUT)
    assert [r.get("status") for r in responses] == [200] * 4, responses
    assert {r["served_by"] for r in responses} == CLONES


def test_helper_drain_is_bounded_by_its_timeout(lab, lb_address, both_clones_up):
    """The timeout cuts the wait, not the requests: exit 0, sessions_left says what is left."""
    lb, client = lab[LB], lab[APP2]
    url = f"https://{lb_address}/slow?seconds=4"
    start_in_background(client, SLOW_UNIT, SLOW_OUTPUT, CONCURRENT_CLIENT, url, "4")
    run = helper(lb, "drain", "app", APP1, "--timeout", "0.5", busy_on=f"app/{APP1}")
    assert run["busy"], f"no request in flight on {APP1}: {run}"
    assert run["rc"] == 0, run
    drained = run["json"]
    assert drained["sessions_left"] >= 1, drained
    assert drained["status"] == "DRAIN"
    assert 0.5 <= drained["waited"] < 2.5, drained
    responses = background_output(client, SLOW_UNIT, SLOW_OUTPUT)
    assert [r.get("status") for r in responses] == [200] * 4, responses


def test_helper_ready_fails_naming_a_server_whose_app_is_stopped(lab, lb_address, both_clones_up):
    """Out of maint, with its app stopped: exit 1 after the timeout, naming the server, its
    status and its last check; and not one request sent to it meanwhile (ready leaves maint
    through drain until a check has concluded: HAProxy itself would send requests at once)."""
    lb, app2 = lab[LB], lab[APP2]
    assert helper(lb, "drain", "app", APP2, "--maint", "--timeout", "5")["rc"] == 0
    try:
        assert app2.run("systemctl stop molecule-app.service").rc == 0
        redispatched = stat_field(lb, APP2, "wredis")
        # Requests through the balancer, 50 ms apart, for longer than `ready` tries.
        start_in_background(
            lab[APP1], CLIENT_UNIT, CLIENT_OUTPUT, CLIENT, f"https://{lb_address}/", "100", "0.05"
        )
        run = helper(lb, "ready", "app", APP2, "--timeout", "3")
        message = failed_in_one_line(run, 1)
        assert f"app/{APP2}" in message, message
        assert "last status DOWN" in message, message
        assert "L4CON" in message and "Connection refused" in message, message
        assert 3.0 <= run["elapsed"] < 6.5, run
        # Left ready, and DOWN: HAProxy's checks bring it back once its app answers.
        state = helper(lb, "state", "app", APP2)["json"]
        assert (state["admin"], state["status"], state["check"]) == ("ready", "DOWN", "L4CON")
        responses = background_output(lab[APP1], CLIENT_UNIT, CLIENT_OUTPUT)
        assert len(responses) == 100
        assert served_by(responses) == {APP1}
        assert stat_field(lb, APP2, "wredis") == redispatched, "requests were sent to haproxy-app2"
    finally:
        app2.run("systemctl start molecule-app.service")
    back = watch(lb, APP2, "UP", deadline=10)
    assert back["ok"], f"{APP2} did not come back UP by its checks: {back}"


def test_helper_watch_follows_a_server_down_and_up_again(lab, both_clones_up):
    """`watch --until-back`: a line per change, from UP through down to UP, then the end line."""
    lb, app2 = lab[LB], lab[APP2]
    unit, output = "molecule-haproxy-helper-watch", "/run/molecule-haproxy-helper-watch.jsonl"
    lb.run("rm -f %s; systemctl reset-failed %s", output, unit)
    started = lb.run(
        "systemd-run --unit %s --collect --property StandardOutput=file:%s"
        " %s watch app %s --timeout 30 --until-back",
        unit,
        output,
        HELPER,
        APP2,
    )
    assert started.rc == 0, started.stderr
    # Its first line (the server UP) before the app stops, however slowly the watch started.
    first = lb.run("timeout 10 sh -c 'until [ -s %s ]; do sleep 0.05; done'", output)
    assert first.rc == 0, f"the watch printed nothing in 10 s: {first.stderr}"
    try:
        assert app2.run("systemctl stop molecule-app.service").rc == 0
        assert watch(lb, APP2, "DOWN", deadline=10)["ok"]
    finally:
        app2.run("systemctl start molecule-app.service")
    lines = [json.loads(line) for line in output_when_done(lb, unit, output, 40).splitlines()]
    changes, end = lines[:-1], lines[-1]
    assert changes[0]["status"] == "UP", lines
    assert any(line["operational"] == "down" for line in changes), lines
    assert changes[-1]["status"] == "UP", lines
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines), lines
    assert (end["end"], end["seen_down"], end["back"]) == (True, True, True), lines
    # An unknown server fails at once, in one line.
    message = failed_in_one_line(helper(lb, "watch", "app", "nope", "--timeout", "5"), 1)
    assert "app/nope: no such server" in message, message


def test_helper_unknown_server_or_backend_exits_1(lab, both_clones_up):
    lb = lab[LB]
    for args in (
        ["state", "app", "nope"],
        ["maint", "app", "nope"],
        ["drain", "app", "nope", "--timeout", "1", "--maint"],
        ["ready", "app", "nope", "--timeout", "1"],
    ):
        message = failed_in_one_line(helper(lb, *args), 1)
        assert "app/nope: no such server" in message, message
        assert APP1 in message and APP2 in message, message  # what exists instead
    message = failed_in_one_line(helper(lb, "state", "nope", APP1), 1)
    assert f"nope/{APP1}: no such backend" in message, message
    failed_in_one_line(helper(lb, "servers", "--backend", "nope"), 1)
    message = failed_in_one_line(helper(lb, "--socket", "/run/haproxy/none.sock", "servers"), 1)
    assert "/run/haproxy/none.sock" in message, message
    # Usage errors: exit 2, one line too.
    failed_in_one_line(helper(lb, "drain", "app"), 2)
    failed_in_one_line(helper(lb, "ready", "app", APP1, "--timeout", "soon"), 2)
    # Nothing changed.
    servers = helper(lb, "servers")["json"]["servers"]
    assert {(s["server"], s["admin"], s["status"]) for s in servers} == {
        (APP1, "ready", "UP"),
        (APP2, "ready", "UP"),
    }
