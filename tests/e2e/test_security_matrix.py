"""The security matrix of the converged lab, measured rather than assumed: which TCP ports each
host accepts and from whom (from the balancer, from a host outside every group and from the
controller), which listeners are wider than they need to be, where the secrets live and who may
read them, that no run leaves a secret in any output or log (a no-op re-run at the highest
verbosity, the lab's first converge, and every secret changed and changed back at the highest
verbosity, scanned for the old and the new values), and that the application runs unprivileged
under systemd's hardening.

test_stack_security.py proves each service's own access rules (logins, ACLs); this file covers
the whole of every host, one table per claim, declared once below.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIRST_CONVERGE, ROOT, LabShell

from ansible_collections.deploykit.fleet.plugins.module_utils.release import instance_unit
from deploykit import lab, runner

pytestmark = pytest.mark.e2e

# --- the declarations -------------------------------------------------------------------------

ALL = "all"  # admitted from anywhere: any host of the network, in a group or not

# Who may open a TCP connection to which port: inventory group of the TARGET -> {port: groups
# of the SOURCE admitted}. Every host also reaches its own listeners on its private address (the
# firewall admits `lo`, and traffic to a host's own address goes through it): that is why the
# balancer alone reaches its stats port. Sources come from the roles' defaults, as the lab uses
# them: common_firewall_ssh_sources is the lab's network (every source probed here is in it, so SSH
# answers them all; the lab's inventory sets it), haproxy_firewall_allowed_groups
# [all], haproxy_stats_allowed_groups [] (nobody but the balancer), app_firewall_allowed_groups
# [lb], redis/postgresql/rabbitmq *_firewall_allowed_groups [app, worker].
PORT_MATRIX: dict[str, dict[int, frozenset[str]]] = {
    ALL: {22: frozenset({ALL})},
    "lb": {80: frozenset({ALL}), 8404: frozenset()},
    "app": {8000: frozenset({"lb"})},
    "cache": {6379: frozenset({"app", "worker"})},
    "docstore": {5432: frozenset({"app", "worker"})},
    "queue": {5672: frozenset({"app", "worker"})},
}
# Listeners that must stay on loopback: nginx's baked pages (HAProxy on the same host is their
# only client), epmd and the Erlang distribution of a single RabbitMQ node.
LOOPBACK_ONLY: dict[str, frozenset[int]] = {
    "lb": frozenset({8081}),
    "queue": frozenset({4369, 25672}),
}
# Probed on every host besides its declared ports: what a stack like this one could expose by
# mistake (TLS, management UIs, Erlang, MongoDB, the static server, the stats page).
COMMON_PORTS = (22, 80, 443, 4369, 5432, 5672, 6379, 8000, 8081, 8404, 15672, 25672, 27017)

# The application the lab ships (examples/shop): its units and its settings file.
APP = "shop"
APP_ENV = f"/srv/{APP}/shared/env"
# Another application's settings file: `deploy --replace` (tests/e2e/test_faults.py) leaves the
# replaced application's tree behind, so that a return to it needs no new artifact. Such a file is
# held to APP_ENV's owner and mode.
OTHER_APP_ENV = re.compile(r"/srv/[a-z0-9][a-z0-9_-]*/shared/env")
SERVICE_ACCOUNT = "deploykit"  # common_service_user


@dataclass(frozen=True)
class SecretFile:
    """A file (or socket, or directory) on the hosts of ``group`` that holds or guards a secret."""

    group: str
    path: str
    owner: str
    file_group: str
    mode: int
    why: str


SECRET_FILES: tuple[SecretFile, ...] = (
    SecretFile(
        "app",
        APP_ENV,
        "root",
        "root",
        0o600,
        "SECRET_KEY and the service URLs with their passwords (systemd reads it, as PID 1)",
    ),
    SecretFile(
        "worker",
        APP_ENV,
        "root",
        "root",
        0o600,
        "the same settings as the web clones (systemd reads it, as PID 1)",
    ),
    SecretFile(
        "cache",
        "/etc/redis/users.acl",
        "redis",
        "redis",
        0o640,
        "the ACL users (password hashes); 0640 redis:redis is Debian's statoverride",
    ),
    SecretFile(
        "cache",
        "/etc/redis/admin.secret",
        "root",
        "root",
        0o600,
        "the Redis administrator's password, read by redis-admin",
    ),
    SecretFile(
        "queue",
        "/var/lib/rabbitmq/.erlang.cookie",
        "rabbitmq",
        "rabbitmq",
        0o400,
        "the Erlang cookie: whoever holds it controls the node",
    ),
    SecretFile(
        "docstore",
        "/etc/postgresql/15/main/pg_hba.conf",
        "postgres",
        "postgres",
        0o640,
        "who may log in, and how",
    ),
    SecretFile(
        "docstore",
        "/var/lib/postgresql/15/main",
        "postgres",
        "postgres",
        0o700,
        "the data directory: pg_authid holds the SCRAM verifiers of the passwords",
    ),
    SecretFile(
        "lb",
        "/etc/haproxy/haproxy.cfg",
        "root",
        "haproxy",
        0o640,
        "the stats password (haproxy reads it as group haproxy)",
    ),
    SecretFile(
        "lb",
        "/run/haproxy/admin.sock",
        "root",
        "haproxy",
        0o660,
        "the runtime API at level admin: drain, maint, weights",
    ),
    # connect() on a unix socket needs write permission: 0755 leaves it to root.
    SecretFile(
        "lb",
        "/run/haproxy-master.sock",
        "root",
        "root",
        0o755,
        "the master CLI (reload, and every worker's runtime API)",
    ),
)


def controller_secret_files(inventory: Path) -> dict[Path, int]:
    """The controller's side: path -> mode, owned by whoever runs deploykit."""
    ssh_dir = inventory.parent / ".ssh"
    secrets_file = lab.secrets_file(ROOT)
    return {
        secrets_file: 0o600,
        secrets_file.parent: 0o700,
        ssh_dir / "id_ed25519": 0o600,
        ssh_dir: 0o700,
        ssh_dir / "known_hosts": 0o600,
        # Each run dir holds env/envvars and artifacts/command (the run's whole environment).
        ROOT / ".cache" / "runs": 0o700,
    }


# systemd hardening every unit of the application keeps (web and worker use the same template):
# `systemctl show` property -> value.
UNIT_HARDENING = {
    "User": SERVICE_ACCOUNT,
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}
# The worker's is a template: the live release's instance is checked.
APP_UNITS = {"app": f"{APP}-web.service", "worker": f"{APP}-worker@.service"}
# `systemd-analyze security` measured 1.5 ("OK") for both units on the lab (systemd 252). What
# is left is what a network service needs (AF_INET sockets, the host's network, @system-service's
# @privileged/@resources syscalls) plus a few 0.1 items. 2.0 leaves room for a systemd update that
# rescores an item, and fails when a real protection goes (CapabilityBoundingSet= alone is worth
# more than 0.5, PrivateDevices/ProtectKernel* 0.2-0.3 each).
MAX_EXPOSURE = 2.0


# --- probes run on a host (stdlib python3 only) ------------------------------------------------

# argv[1]: JSON [[address, port], ...]; prints JSON ["open" | "refused" | "timeout", ...], probed
# in parallel so that a host's dropped ports cost one timeout, not one each.
MULTI_CONNECT = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    try:
        socket.create_connection((target[0], target[1]), timeout=3).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(max(1, len(targets))) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""

# argv[1]: JSON [[address, port] or "/unix/socket/path", ...]. Sends HAProxy's runtime API command
# `show info` to each and prints JSON ["runtime-api" | "closed" | "other: <first bytes>", ...].
RUNTIME_API_PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
MARKERS = (b"Name: HAProxy", b"Uptime_sec:")
def ask(target):
    try:
        if isinstance(target, str):
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(3)
            conn.connect(target)
        else:
            conn = socket.create_connection((target[0], target[1]), timeout=3)
    except OSError:
        return "closed"
    reply = b""
    with conn:
        try:
            conn.sendall(b"show info\\n")
            while len(reply) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
    if any(marker in reply for marker in MARKERS):
        return "runtime-api"
    return "other: " + repr(reply[:40])
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(max(1, len(targets))) as pool:
    print(json.dumps(list(pool.map(ask, targets))))
"""

# argv[1]: JSON [path, ...]; prints JSON {path: [owner, group, mode, kind] or null,
# "group:<name>": [members...]} (kind: file, dir, socket, other).
FILE_STATS = """
import grp, json, os, pwd, stat, sys
out = {}
for path in json.loads(sys.argv[1]):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        out[path] = None
        continue
    kind = ("file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
            else "socket" if stat.S_ISSOCK(st.st_mode) else "other")
    group = grp.getgrgid(st.st_gid).gr_name
    out[path] = [pwd.getpwuid(st.st_uid).pw_name, group, stat.S_IMODE(st.st_mode), kind]
    out["group:" + group] = grp.getgrgid(st.st_gid).gr_mem
print(json.dumps(out))
"""

# argv[1]: a unit. Prints JSON [{pid, uids, cap_eff, cap_bnd, no_new_privs}] for every process
# systemd counts in the unit (ps's `unit` column), the gunicorn/celery children included.
UNIT_PROCESSES = """
import json, subprocess, sys
ps = subprocess.run(["ps", "-e", "-o", "pid=,unit="], capture_output=True, text=True, check=True)
found = []
for line in ps.stdout.splitlines():
    pid, _, unit = line.strip().partition(" ")
    if unit.strip() != sys.argv[1]:
        continue
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(l.split(":", 1) for l in status.read().splitlines() if ":" in l)
    except FileNotFoundError:
        continue  # exited meanwhile
    found.append({"pid": int(pid), "uids": fields["Uid"].split(),
                  "cap_eff": fields["CapEff"].strip(), "cap_bnd": fields["CapBnd"].strip(),
                  "no_new_privs": fields["NoNewPrivs"].strip()})
print(json.dumps(found))
"""

# Preceded by `DATA = "<base64 of JSON>"` (the secrets travel on stdin, never on a command line):
# {"needles": [[label, hex], ...], "paths": [...], "journal_since": epoch | null,
# "journal_until": epoch | null}. Prints JSON
# {"findings": [{where, secret, count, context}], "files": n, "journal_entries": n}. A context
# never holds a needle: each occurrence is replaced by <label> (a base64 one with the 2 characters
# either side that mix its bits with its neighbours'), and the window is widened so that it never
# cuts one in two.
SECRET_SCAN = """
import base64, json, os, stat, subprocess
DATA = json.loads(base64.b64decode(DATA))
NEEDLES = [(label, bytes.fromhex(needle)) for label, needle in DATA["needles"]]
MAX_BYTES = 64 * 1024 * 1024
findings = []
counts = {"files": 0, "journal_entries": 0}
def occurrences(data):
    found = []
    for label, needle in NEEDLES:
        edge = 2 if label.endswith(":base64") else 0
        at = data.find(needle)
        while at != -1:
            found.append((max(0, at - edge), at + len(needle) + edge, label))
            at = data.find(needle, at + 1)
    return found
def context(data, start, end, found):
    a, b = max(0, start - 60), min(len(data), end + 60)
    for s, e, _ in found:
        if s < a < e:
            a = s
        if s < b < e:
            b = e
    out, pos = b"", a
    for s, e, label in sorted(f for f in found if f[0] >= a and f[1] <= b):
        if s < pos:
            pos = max(pos, e)
            continue
        out += data[pos:s] + b"<" + label.encode() + b">"
        pos = e
    out += data[pos:b]
    return out.decode("utf-8", "replace").replace("\\n", "\\\\n")
def scan(where, data):
    found = occurrences(data)
    by_label = {}
    for hit in found:
        by_label.setdefault(hit[2], []).append(hit)
    for label, hits in sorted(by_label.items()):
        s, e, _ = hits[0]
        findings.append({"where": where, "secret": label, "count": len(hits),
                         "context": context(data, s, e, found)})
for top in DATA["paths"]:
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in ("/proc", "/sys", "/dev")]
        for name in files:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                    continue
                with open(path, "rb") as handle:
                    scan(path, handle.read())
                counts["files"] += 1
            except OSError:
                continue
if DATA.get("journal_since") is not None:
    window = ["--since", "@%d" % DATA["journal_since"]]
    if DATA.get("journal_until") is not None:
        window += ["--until", "@%d" % DATA["journal_until"]]
    journal = subprocess.run(["journalctl", "--no-pager", "-o", "json", *window],
                             capture_output=True, check=True).stdout
    for line in journal.splitlines():
        entry = json.loads(line)
        counts["journal_entries"] += 1
        who = entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER") or "?"
        for field, value in entry.items():
            raw = bytes(value) if isinstance(value, list) else str(value).encode()
            scan("journal %s %s (cursor %s)" % (who, field, entry.get("__CURSOR", "?")[-24:]), raw)
print(json.dumps({"findings": findings, **counts}))
"""


# --- the lab as the tests see it -----------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    groups: frozenset[str]


@dataclass(frozen=True)
class Vantage:
    """A place probes run from: a lab host, the outsider container or the controller."""

    name: str
    address: str
    groups: frozenset[str]
    python: Callable[..., str]  # (code, *args) -> stdout


@pytest.fixture(scope="module")
def hosts(lab_up: lab.LabUpResult) -> dict[str, Host]:
    return {h.name: Host(h.name, h.address, frozenset(h.groups)) for h in lab_up.hosts}


def _in_group(hosts: dict[str, Host], group: str) -> list[Host]:
    return [h for h in hosts.values() if group in h.groups]


@pytest.fixture(scope="module")
def deployed(request: pytest.FixtureRequest, lab_shell: LabShell, hosts: dict[str, Host]) -> None:
    """The stack with the application deployed. A lab that already runs it (re-runs, a shared
    lab) is used as it is; a fresh one gets `deploykit up` through the `shop` fixture."""
    nodes = _in_group(hosts, "app") + _in_group(hosts, "worker")
    if not all(lab_shell.succeeds(h.name, f"test -f {APP_ENV}") for h in nodes):
        request.getfixturevalue("shop")


def _run_local(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-", *args],
        input=code,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"controller probe failed: {proc.stderr[-2000:]}"
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def outsider(lab_up: lab.LabUpResult) -> Iterator[Vantage]:
    """A throwaway container on the lab's network, in no inventory group (so the firewalls know
    nothing of it), running the lab's image: the view of any other machine of the network."""
    client = lab.docker_client()
    network = client.networks.get(lab.NETWORK_NAME)
    subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    taken = {c["IPv4Address"].split("/")[0] for c in network.attrs.get("Containers", {}).values()}
    # The top of the subnet: lab hosts take .10 up (services, then clones).
    address = next(
        str(subnet.network_address + n)
        for n in range(250, 230, -1)
        if str(subnet.network_address + n) not in taken
    )
    api = client.api
    # Not labelled as a lab host and not named like one: `lab up` and `lab down` leave it alone.
    created = api.create_container(
        lab_up.image,
        command=["sleep", "600"],
        name=f"deploykit-secmatrix-outsider-{os.getpid()}",
        detach=True,
        host_config=api.create_host_config(),
        networking_config=api.create_networking_config(
            {lab.NETWORK_NAME: api.create_endpoint_config(ipv4_address=address)}
        ),
    )
    try:
        api.start(created["Id"])
        container = client.containers.get(created["Id"])

        def python(code: str, *args: str) -> str:
            exit_code, (stdout, stderr) = container.exec_run(
                ["python3", "-c", code, *args], demux=True
            )
            assert exit_code == 0, f"outsider probe failed: {(stderr or b'').decode()[-2000:]}"
            return (stdout or b"").decode().strip()

        yield Vantage("outsider", address, frozenset(), python)
    finally:
        api.remove_container(created["Id"], force=True)


@pytest.fixture(scope="module")
def vantages(lab_shell: LabShell, hosts: dict[str, Host], outsider: Vantage) -> list[Vantage]:
    balancer = _in_group(hosts, "lb")[0]
    ipam = lab.docker_client().networks.get(lab.NETWORK_NAME).attrs["IPAM"]["Config"][0]
    return [
        Vantage(
            balancer.name,
            balancer.address,
            balancer.groups,
            lambda code, *args: lab_shell.python(balancer.name, code, *args),
        ),
        outsider,
        # The Docker host, the network's gateway: where Ansible connects from.
        Vantage("controller", ipam["Gateway"], frozenset(), _run_local),
    ]


def _declared_ports(host: Host) -> dict[int, frozenset[str]]:
    ports: dict[int, frozenset[str]] = {}
    for group in (ALL, *sorted(host.groups)):
        ports.update(PORT_MATRIX.get(group, {}))
    return ports


def _admitted(source: Vantage, target: Host, allowed: frozenset[str]) -> bool:
    return ALL in allowed or source.name == target.name or bool(allowed & source.groups)


def _expected_open(source: Vantage, target: Host) -> set[int]:
    declared = _declared_ports(target)
    return {port for port, allowed in declared.items() if _admitted(source, target, allowed)}


def _probe_ports(host: Host) -> list[int]:
    return sorted(set(COMMON_PORTS) | set(_declared_ports(host)))


# --- the port matrix ---------------------------------------------------------------------------


def test_every_port_of_every_host_admits_exactly_the_declared_groups(
    deployed: None, hosts: dict[str, Host], vantages: list[Vantage]
) -> None:
    targets = [(h, p) for h in hosts.values() for p in _probe_ports(h)]
    wire = json.dumps([[h.address, p] for h, p in targets])
    states: dict[str, dict[tuple[str, int], str]] = {}
    for source in vantages:
        states[source.name] = dict(
            zip(
                ((h.name, p) for h, p in targets),
                json.loads(source.python(MULTI_CONNECT, wire)),
                strict=True,
            )
        )
    # An admitted port that does not answer may be a service restarting (fault tests share the
    # lab): probe those again for a while. A port open that should not be never "recovers".
    for _ in range(6):
        missing = [
            (s, h, p)
            for s in vantages
            for h, p in targets
            if p in _expected_open(s, h) and states[s.name][(h.name, p)] != "open"
        ]
        if not missing:
            break
        time.sleep(5)
        for source in {s.name: s for s, _, _ in missing}.values():
            again = [(h, p) for s, h, p in missing if s is source]
            answers = json.loads(
                source.python(MULTI_CONNECT, json.dumps([[h.address, p] for h, p in again]))
            )
            for (h, p), state in zip(again, answers, strict=True):
                states[source.name][(h.name, p)] = state

    problems = []
    header = f"{'host':8} {'port':>5}  {'admitted from':18}" + "".join(
        f" {s.name:>10}" for s in vantages
    )
    rows = [header]
    for host, port in targets:
        allowed = _declared_ports(host).get(port)
        declared = "-" if allowed is None else ", ".join(sorted(allowed)) or "(itself only)"
        cells = ""
        for source in vantages:
            state = states[source.name][(host.name, port)]
            should_open = port in _expected_open(source, host)
            wrong = (state == "open") != should_open
            cells += f" {state + ('!' if wrong else ''):>10}"
            if wrong:
                problems.append(
                    f"from {source.name} ({source.address}): {host.name}:{port} is {state}; "
                    f"the matrix admits {declared if allowed is not None else 'nobody'}"
                )
        rows.append(f"{host.name:8} {port:>5}  {declared:18}{cells}")
    print("\nport matrix (open/refused/timeout; ! = differs from the declaration):")
    print("\n".join(rows))
    assert not problems, "\n".join(problems)


def _listeners(lab_shell: LabShell, host: str) -> list[tuple[str, int]]:
    """(address, port) of every TCP listener of HOST, addresses without brackets or %iface."""
    found = []
    for line in lab_shell.run(host, "ss -ltnH").splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        found.append((address.strip("[]").split("%")[0], int(port)))
    return found


def _is_wildcard(address: str) -> bool:
    return address in ("*", "0.0.0.0", "::")


def test_no_listener_is_wider_than_the_matrix(
    deployed: None, lab_shell: LabShell, hosts: dict[str, Host]
) -> None:
    problems = []
    for host in hosts.values():
        declared = _declared_ports(host)
        public = {p for p, allowed in declared.items() if ALL in allowed}
        loopback_only = set().union(*(LOOPBACK_ONLY.get(g, frozenset()) for g in host.groups))
        listeners = _listeners(lab_shell, host.name)
        print(f"{host.name}: " + ", ".join(f"{a}:{p}" for a, p in sorted(listeners)))
        for address, port in listeners:
            where = f"{host.name}: {address}:{port}"
            if _is_wildcard(address):
                if port not in public:
                    problems.append(
                        f"{where} listens on every address; the matrix makes "
                        f"{port} {'private' if port in declared else 'undeclared'}"
                    )
                continue
            local = ipaddress.ip_address(address).is_loopback
            if port in loopback_only and not local:
                problems.append(f"{where}: port {port} must listen on loopback only")
            elif not local and port not in declared:
                problems.append(f"{where}: a network listener the matrix does not declare")
    assert not problems, "\n".join(problems)


def test_the_runtime_api_is_a_unix_socket_only(
    deployed: None,
    lab_shell: LabShell,
    hosts: dict[str, Host],
    outsider: Vantage,
) -> None:
    balancer = _in_group(hosts, "lb")[0]
    unix = lab_shell.run(balancer.name, "ss -lxH")
    # HAProxy binds `<socket>.<pid>.tmp` and renames it into place: ss shows the bound name.
    assert re.search(r"\s/run/haproxy/admin\.sock(\.\d+\.tmp)?\s", unix), unix
    assert lab_shell.succeeds(balancer.name, "test -S /run/haproxy/admin.sock")

    # The probe recognises the runtime API where it is (its positive control)...
    local = [
        [a if not _is_wildcard(a) else ("::1" if a == "::" else "127.0.0.1"), p]
        for a, p in _listeners(lab_shell, balancer.name)
    ]
    inside = json.loads(
        lab_shell.python(
            balancer.name, RUNTIME_API_PROBE, json.dumps(["/run/haproxy/admin.sock", *local])
        )
    )
    assert inside[0] == "runtime-api", f"show info on the unix socket: {inside[0]}"
    # ...and nowhere else: no TCP listener of the balancer answers it, from the balancer itself
    # (loopback included) or from outside.
    outside_targets = [[balancer.address, p] for p in _probe_ports(balancer)]
    outside = json.loads(outsider.python(RUNTIME_API_PROBE, json.dumps(outside_targets)))
    answers = list(zip(local, inside[1:], strict=True)) + list(
        zip(outside_targets, outside, strict=True)
    )
    for (address, port), answer in answers:
        print(f"show info -> {address}:{port}: {answer}")
    leaks = [f"{a}:{p}" for (a, p), answer in answers if answer == "runtime-api"]
    assert not leaks, f"HAProxy's runtime API answers over TCP at {', '.join(leaks)}"


# --- secrets: where they are, who may read them -------------------------------------------------


@pytest.fixture(scope="module")
def lab_secrets(deployed: None, lab_shell: LabShell, hosts: dict[str, Host]) -> dict[str, str]:
    """Every secret of the lab, by name: the generated secrets.yml, plus those the hosts make
    themselves (the Redis administrator's password passes through Ansible; the Erlang cookie
    is the most dangerous value on the queue host)."""
    loaded: dict[str, str] = yaml.safe_load(lab.secrets_file(ROOT).read_text())
    found = dict(loaded)
    for host in _in_group(hosts, "cache")[:1]:
        found["redis_admin_password"] = lab_shell.run(host.name, "cat /etc/redis/admin.secret")
    for host in _in_group(hosts, "queue")[:1]:
        found["erlang_cookie"] = lab_shell.run(host.name, "cat /var/lib/rabbitmq/.erlang.cookie")
    assert all(found.values()), [k for k, v in found.items() if not v]
    return found


def _base64_cores(raw: bytes) -> list[bytes]:
    """What the base64 of ANY data holding RAW always contains, one string per alignment of RAW
    in that data (offset mod 3): the characters that depend on RAW's bytes only."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        start = -(-8 * shift // 6)  # the first character made of RAW's bits only
        end = 8 * (shift + len(raw)) // 6  # the last one, before bits of padding
        cores.append(encoded[start:end])
    return cores


def needles(secrets: dict[str, str]) -> list[tuple[str, bytes]]:
    """(label, bytes) for every form a secret can take in output: raw, URL-encoded (how the app
    role puts passwords in REDIS_URL and friends), JSON-escaped and base64 (slurp, b64encode)."""
    found: list[tuple[str, bytes]] = []
    for name, value in sorted(secrets.items()):
        forms = {"raw": value.encode()}
        forms["urlencoded"] = urllib.parse.quote(value, safe="").encode()
        forms["json"] = json.dumps(value)[1:-1].encode()
        seen = set()
        for form, data in forms.items():
            if data not in seen:
                seen.add(data)
                found.append((f"{name}:{form}", data))
        found += [(f"{name}:base64", core) for core in _base64_cores(value.encode())]
    return found


def _scan_code(
    secrets: dict[str, str],
    paths: Iterable[str],
    journal_since: float | None = None,
    journal_until: float | None = None,
) -> str:
    data = {
        "needles": [[label, needle.hex()] for label, needle in needles(secrets)],
        "paths": list(paths),
        "journal_since": None if journal_since is None else int(journal_since),
        # Whole seconds, rounded up: the window holds the run's last second.
        "journal_until": None if journal_until is None else int(journal_until) + 1,
    }
    return f"DATA = {base64.b64encode(json.dumps(data).encode()).decode()!r}\n" + SECRET_SCAN


def _report(findings: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{f['where']}: {f['secret']} x{f['count']}: ...{f['context']}..." for f in findings
    )


def test_secret_files_are_private_to_their_service(
    lab_shell: LabShell, hosts: dict[str, Host], lab_up: lab.LabUpResult, deployed: None
) -> None:
    problems = []
    for host in hosts.values():
        declared = [f for f in SECRET_FILES if f.group in host.groups]
        if not declared:
            continue
        stats = json.loads(
            lab_shell.python(host.name, FILE_STATS, json.dumps([f.path for f in declared]))
        )
        for spec in declared:
            got = stats[spec.path]
            wanted = [spec.owner, spec.file_group, spec.mode]
            print(
                f"{host.name}: {spec.path}: {got} (wanted {spec.owner}:{spec.file_group} "
                f"{spec.mode:04o}: {spec.why})"
            )
            if got is None:
                problems.append(f"{host.name}: {spec.path} is missing ({spec.why})")
            elif got[:3] != wanted:
                problems.append(
                    f"{host.name}: {spec.path} is {got[0]}:{got[1]} {got[2]:04o}, "
                    f"wanted {spec.owner}:{spec.file_group} {spec.mode:04o} ({spec.why})"
                )
            elif stats[f"group:{spec.file_group}"]:
                # A group that can read a secret must not have members borrowing that access.
                problems.append(
                    f"{host.name}: group {spec.file_group} (reads {spec.path}) has members "
                    f"{stats[f'group:{spec.file_group}']}"
                )
    for path, mode in controller_secret_files(lab_up.inventory).items():
        st = path.stat()
        print(f"controller: {path}: uid {st.st_uid} gid {st.st_gid} {st.st_mode & 0o7777:04o}")
        if (st.st_uid, st.st_mode & 0o7777) != (os.getuid(), mode):
            problems.append(
                f"controller: {path} is uid {st.st_uid} {st.st_mode & 0o7777:04o}, wanted uid "
                f"{os.getuid()} (who runs deploykit) {mode:04o}"
            )
    assert not problems, "\n".join(problems)


def test_no_secret_lies_in_a_file_the_table_does_not_declare(
    lab_shell: LabShell, hosts: dict[str, Host], lab_secrets: dict[str, str]
) -> None:
    """Every file of a host holding a secret (in plain text) is one of SECRET_FILES: no copy, no
    backup, no leftover in a world-readable place."""
    roots = [
        "/etc",
        "/srv",
        "/root",
        "/home",
        "/opt",
        "/usr/local",
        "/var/lib",
        "/var/backups",
        "/var/tmp",
        "/tmp",
        "/run",
    ]
    problems = []
    for host in hosts.values():
        scan = json.loads(lab_shell.python(host.name, _scan_code(lab_secrets, roots)))
        findings = scan["findings"]
        print(f"{host.name}: {scan['files']} files read")
        declared = {f.path for f in SECRET_FILES if f.group in host.groups}
        holders: dict[str, set[str]] = {}
        for finding in findings:
            holders.setdefault(finding["where"], set()).add(finding["secret"].split(":")[0])
        env_spec = next((f for f in SECRET_FILES if f.path == APP_ENV and f.path in declared), None)
        other_envs = [p for p in holders if p not in declared and OTHER_APP_ENV.fullmatch(p)]
        if env_spec and other_envs:
            stats = json.loads(lab_shell.python(host.name, FILE_STATS, json.dumps(other_envs)))
            for path in other_envs:
                got, wanted = stats[path], [env_spec.owner, env_spec.file_group, env_spec.mode]
                print(f"{host.name}: {path}: another application's settings: {got}")
                if got[:3] == wanted:
                    declared.add(path)
                else:
                    problems.append(f"{host.name}: {path} is {got}, wanted {wanted} like {APP_ENV}")
        for path, names in sorted(holders.items()):
            print(f"{host.name}: {path} holds {', '.join(sorted(names))}")
            if path not in declared:
                problems += [
                    f"{host.name}: {f['where']}: {f['secret']}: ...{f['context']}..."
                    for f in findings
                    if f["where"] == path
                ]
    assert not problems, "undeclared files hold secrets:\n" + "\n".join(problems)


# --- the application runs unprivileged ------------------------------------------------------------


def test_the_application_runs_unprivileged_under_systemd_hardening(
    deployed: None, lab_shell: LabShell, hosts: dict[str, Host]
) -> None:
    problems = []
    for group, template in APP_UNITS.items():
        for host in _in_group(hosts, group):
            unit = template
            if template.endswith("@.service"):
                live = lab_shell.run(host.name, f"readlink /srv/{APP}/current").strip()
                unit = instance_unit(template, live.rsplit("/", 1)[-1])
            uid = lab_shell.run(host.name, f"id -u {SERVICE_ACCOUNT}")
            # A clone the fault tests killed comes back within seconds (Restart=on-failure).
            deadline = time.monotonic() + 60
            while not lab_shell.succeeds(host.name, f"systemctl is-active --quiet {unit}"):
                assert time.monotonic() < deadline, f"{host.name}: {unit} is not active"
                time.sleep(2)
            shown = dict(
                line.split("=", 1)
                for line in lab_shell.run(
                    host.name, f"systemctl show -p {','.join(UNIT_HARDENING)} {unit}"
                ).splitlines()
            )
            for prop, wanted in UNIT_HARDENING.items():
                if shown.get(prop) != wanted:
                    problems.append(
                        f"{host.name}: {unit} {prop}={shown.get(prop)!r}, wanted {wanted!r}"
                    )
            processes = json.loads(lab_shell.python(host.name, UNIT_PROCESSES, unit))
            if not processes:
                problems.append(f"{host.name}: {unit} has no process")
            for proc in processes:
                # What the kernel enforces, not what the unit file says: real, effective, saved
                # and filesystem uids; capabilities; the no_new_privs bit (setuid binaries inert).
                who = f"{host.name}: {unit} pid {proc['pid']}"
                if set(proc["uids"]) != {uid}:
                    problems.append(f"{who} runs as uids {proc['uids']}, not {SERVICE_ACCOUNT}")
                if int(proc["cap_eff"], 16) or int(proc["cap_bnd"], 16):
                    problems.append(
                        f"{who} has capabilities (CapEff {proc['cap_eff']}, "
                        f"CapBnd {proc['cap_bnd']})"
                    )
                if proc["no_new_privs"] != "1":
                    problems.append(f"{who} can gain privileges (NoNewPrivs 0)")
            analysis = lab_shell.run(host.name, f"systemd-analyze security --no-pager {unit}")
            match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", analysis)
            assert match, analysis[-500:]
            score = float(match.group(1))
            print(
                f"{host.name}: {unit}: {len(processes)} processes as uid {uid}; "
                f"exposure {score} {match.group(2)}"
            )
            if score > MAX_EXPOSURE:
                gaps = [line.strip() for line in analysis.splitlines() if line.startswith("✗")]
                problems.append(
                    f"{host.name}: {unit} exposure {score} > {MAX_EXPOSURE}:\n  "
                    + "\n  ".join(gaps)
                )
    assert not problems, "\n".join(problems)


# --- secrets never appear in output or logs ---------------------------------------------------


@dataclass(frozen=True)
class VerboseRun:
    result: runner.RunResult
    started: float
    private_dir: Path


@pytest.fixture(scope="module")
def verbose_site_run(
    deployed: None, lab_up: lab.LabUpResult, lab_secrets: dict[str, str]
) -> VerboseRun:
    """site.yml, every tier, at the highest verbosity (-vvvv: module arguments and results,
    connection details): what an operator debugging a failure would run. `deploykit provision`
    has no verbosity option, so the runner is called as the CLI calls it."""
    started = time.time() - 2  # journal timestamps are in whole seconds
    result = runner.run_playbook("site.yml", root=ROOT, inventory=lab_up.inventory, verbosity=4)
    assert result.artifacts_dir is not None, f"the run left no artifacts: {result.to_dict()}"
    return VerboseRun(result, started, result.artifacts_dir.parent.parent)


def test_the_verbose_site_run_converges(verbose_site_run: VerboseRun) -> None:
    result = verbose_site_run.result
    changed = {h: r.changed for h, r in result.recap.items() if r.changed}
    print(f"site.yml -vvvv: {result.status}, rc {result.rc}, changed {changed or 'nothing'}")
    assert result.ok, "\n".join(f"{f.host}: {f.task}: {f.message}" for f in result.failures) or str(
        result.error
    )


def test_no_secret_in_the_runs_output_and_artifacts(
    verbose_site_run: VerboseRun, lab_secrets: dict[str, str]
) -> None:
    private = verbose_site_run.private_dir
    stdout = (private / "artifacts" / private.name / "stdout").read_text()
    # Proof that the run was verbose: -vvvv shows each SSH command and module invocation.
    assert "ESTABLISH SSH CONNECTION" in stdout, "the run was not verbose"
    events = list((private / "artifacts" / private.name / "job_events").glob("*.json"))
    scan = json.loads(
        _run_local(_scan_code(lab_secrets, [str(private), str(ROOT / ".cache" / "facts")]))
    )
    findings = scan["findings"]
    print(
        f"scanned {scan['files']} files: {private} ({len(stdout)} bytes of stdout, "
        f"{len(events)} job events) and the fact cache, for {len(needles(lab_secrets))} forms "
        f"of {len(lab_secrets)} secrets"
    )
    assert len(events) > 100 and scan["files"] > len(events), scan
    assert not findings, "secrets in the run's output:\n" + _report(findings)


def test_no_secret_in_the_hosts_journals_or_logs(
    verbose_site_run: VerboseRun,
    lab_shell: LabShell,
    hosts: dict[str, Host],
    lab_secrets: dict[str, str],
) -> None:
    code = _scan_code(lab_secrets, ["/var/log"], journal_since=verbose_site_run.started)
    findings = []
    for host in hosts.values():
        scan = json.loads(lab_shell.python(host.name, code))
        found = scan["findings"]
        print(
            f"{host.name}: {scan['journal_entries']} journal entries since the run, "
            f"{scan['files']} files under /var/log: {len(found)} finding(s)"
        )
        # The run logged in to every host (sshd's journal entries): an empty journal would mean
        # that nothing was scanned, not that nothing leaked.
        assert scan["journal_entries"] > 0, f"{host.name}: no journal entry since the run"
        findings += [{**f, "where": f"{host.name}: {f['where']}"} for f in found]
    assert not findings, "secrets in the hosts' logs:\n" + _report(findings)


# --- the first converge, and a password change, leave no secret either --------------------------
# The no-op re-run above shows what an unchanged task prints; the tasks that create an account or
# set a password print on the paths a re-run never takes. Those are scanned here: the lab's first
# converge (kept by conftest.py when this run created the lab), and every secret changed and then
# changed back, at the highest verbosity.


def test_no_secret_in_the_first_converges_output_and_journals(
    deployed: None,
    lab_shell: LabShell,
    hosts: dict[str, Host],
    lab_secrets: dict[str, str],
) -> None:
    record_file = FIRST_CONVERGE / "record.json"
    if not record_file.exists():
        reason = (
            "the lab's first converge was not made by this run (a lab kept with "
            "DEPLOYKIT_KEEP_LAB, or converged outside the tests): its output is not kept"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    record = json.loads(record_file.read_text())
    events = list(FIRST_CONVERGE.glob("*/artifacts/*/job_events/*.json"))
    scan = json.loads(_run_local(_scan_code(lab_secrets, [str(FIRST_CONVERGE)])))
    print(
        f"first converge ({record['command']}, {record['ended'] - record['started']:.0f} s): "
        f"scanned {scan['files']} files: its output and {len(record['runs'])} runs "
        f"({', '.join(record['runs'])}), {len(events)} job events"
    )
    assert any("-site" in run for run in record["runs"]), f"no site.yml run: {record}"
    assert len(events) > 100, f"the first converge left {len(events)} job events"
    findings = scan["findings"]
    code = _scan_code(
        lab_secrets, [], journal_since=record["started"] - 2, journal_until=record["ended"]
    )
    for host in hosts.values():
        journal = json.loads(lab_shell.python(host.name, code))
        print(f"{host.name}: {journal['journal_entries']} journal entries during the converge")
        assert journal["journal_entries"] > 0, f"{host.name}: no journal entry during it"
        findings += [{**f, "where": f"{host.name}: {f['where']}"} for f in journal["findings"]]
    assert not findings, "secrets in the first converge's output:\n" + _report(findings)


# Only the tiers site.yml converges with the secrets (the application's settings are the deploy's):
# the baseline (common) holds none of them.
SECRET_TIERS = "cache,docstore,queue,lb"


@dataclass(frozen=True)
class PasswordChange:
    old: dict[str, str]  # the lab's secrets (secrets.yml), as before and after
    new: dict[str, str]  # what they were changed to, in between
    runs: tuple[runner.RunResult, runner.RunResult]  # old -> new, new -> old
    started: float
    ended: float


@pytest.fixture(scope="module")
def password_change(
    deployed: None, lab_up: lab.LabUpResult, lab_secrets: dict[str, str]
) -> Iterator[PasswordChange]:
    """Every secret of secrets.yml changed (site.yml -vvvv on the tiers, new values as extra
    vars), then changed back (secrets.yml again): two runs that set passwords. The lab ends as it
    began; the clones, whose settings still hold the old values, only lose new connections to
    Redis in between."""
    old: dict[str, str] = yaml.safe_load(lab.secrets_file(ROOT).read_text())
    new = {name: make() for name, make in lab.LAB_SECRETS.items() if name in old}
    started = time.time() - 2
    runs = []
    try:
        for extravars in (new, None):
            runs.append(
                runner.run_playbook(
                    "site.yml",
                    root=ROOT,
                    inventory=lab_up.inventory,
                    extravars=extravars,
                    tags=SECRET_TIERS,
                    verbosity=4,
                )
            )
    finally:
        if len(runs) < 2:  # the change back did not run: leave the lab as it was
            runner.run_playbook("site.yml", root=ROOT, inventory=lab_up.inventory)
    yield PasswordChange(old, new, (runs[0], runs[1]), started, time.time())


def _changed_secrets(change: PasswordChange, lab_secrets: dict[str, str]) -> dict[str, str]:
    """The needles of a password change: every secret as it was, and as it was in between."""
    return {**lab_secrets, **{f"{name} (changed)": value for name, value in change.new.items()}}


def test_a_password_change_and_back_converge_and_change_something(
    password_change: PasswordChange,
) -> None:
    for label, result in zip(("changed", "changed back"), password_change.runs, strict=True):
        changed = {h: r.changed for h, r in result.recap.items() if r.changed}
        print(f"site.yml -vvvv --tags {SECRET_TIERS}, secrets {label}: {result.status}, {changed}")
        assert result.ok, "\n".join(f"{f.host}: {f.task}: {f.message}" for f in result.failures)
        assert changed, f"secrets {label}: nothing changed, so no password was set"


def test_no_secret_old_or_new_in_a_password_changes_output(
    password_change: PasswordChange, lab_secrets: dict[str, str]
) -> None:
    secrets = _changed_secrets(password_change, lab_secrets)
    dirs = []
    for result in password_change.runs:
        assert result.artifacts_dir is not None, result.to_dict()
        private = result.artifacts_dir.parent.parent
        stdout = (result.artifacts_dir / "stdout").read_text()
        assert "ESTABLISH SSH CONNECTION" in stdout, "the run was not verbose"
        dirs.append(str(private))
    scan = json.loads(_run_local(_scan_code(secrets, [*dirs, str(ROOT / ".cache" / "facts")])))
    print(
        f"scanned {scan['files']} files of the two runs and the fact cache for "
        f"{len(needles(secrets))} forms of {len(secrets)} secrets (old and new)"
    )
    assert not scan["findings"], "secrets in a password change's output:\n" + _report(
        scan["findings"]
    )


def test_no_secret_old_or_new_in_the_hosts_logs_after_a_password_change(
    password_change: PasswordChange,
    lab_shell: LabShell,
    hosts: dict[str, Host],
    lab_secrets: dict[str, str],
) -> None:
    code = _scan_code(
        _changed_secrets(password_change, lab_secrets),
        ["/var/log"],
        journal_since=password_change.started,
        journal_until=password_change.ended,
    )
    findings = []
    for host in hosts.values():
        scan = json.loads(lab_shell.python(host.name, code))
        print(
            f"{host.name}: {scan['journal_entries']} journal entries during the change, "
            f"{scan['files']} files under /var/log: {len(scan['findings'])} finding(s)"
        )
        assert scan["journal_entries"] > 0, f"{host.name}: no journal entry during the change"
        findings += [{**f, "where": f"{host.name}: {f['where']}"} for f in scan["findings"]]
    assert not findings, "secrets in the hosts' logs:\n" + _report(findings)
