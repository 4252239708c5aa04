"""Testinfra checks of the redis role with ``redis_sentinel: true``, in the molecule scenario
``redis`` (after ``test_redis.py``, which checks the first primary as a Redis of its own).

Three cache hosts: ``redis-cache`` is the first primary, ``redis-cache2`` and ``redis-cache3``
replicate from it, and each runs a Sentinel. ``test_redis.py`` restarts and kills the first
primary, which may already have made the Sentinels promote a replica: the checks here find the
primary through the Sentinels, as the application does. What the application does is proved from
the app host, over the network, with the application's password: it asks a Sentinel where the
primary is, and may do nothing else there. The failover comes last: the primary is stopped while its
data is replicated, a replica is promoted, and the old primary returns as a replica.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from lab_probes import only_in_scenario, scenario_hosts
from test_redis import APP_USER, RESP_CLIENT, ROLE_DEFAULTS, SCENARIO

pytestmark = only_in_scenario(SCENARIO)

PORT = ROLE_DEFAULTS["redis_port"]
SENTINEL_PORT = ROLE_DEFAULTS["redis_sentinel_port"]
NAME = ROLE_DEFAULTS["redis_sentinel_master_name"]
CACHES = ("redis-cache", "redis-cache2", "redis-cache3")
ADDRESSES = {
    "redis-cache": "172.30.103.10",
    "redis-cache2": "172.30.103.13",
    "redis-cache3": "172.30.103.14",
}
APP, LB = "redis-app", "redis-lb"


@pytest.fixture(scope="module")
def hosts(request):
    return scenario_hosts(request, *CACHES, APP, LB)


@pytest.fixture(scope="module")
def password(hosts) -> str:
    return hosts["redis-cache"].ansible.get_variables()["redis_password"]


@pytest.fixture(scope="module")
def replication_password(password) -> str:
    """The role's documented default: SHA-256 of redis_password with a fixed suffix."""
    return hashlib.sha256(f"{password}:deploykit-redis-replication".encode()).hexdigest()


def send(source, address: str, port: int, *commands) -> dict:
    result = source.run(
        "python3 -c %s %s %s %s", RESP_CLIENT, address, str(port), json.dumps(list(commands))
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def ask(source, address: str, port: int, *commands) -> list:
    answer = send(source, address, port, *commands)
    assert "replies" in answer, f"no connection to {address}:{port}: {answer}"
    return answer["replies"]


def role_of(host) -> list[str]:
    result = host.run("redis-admin ROLE")
    assert result.rc == 0, result.stderr
    return result.stdout.split()


def primary_seen_by_app(hosts, password) -> list[str]:
    """What a Sentinel tells the application (each Sentinel in turn until one answers)."""
    for name in CACHES:
        answer = send(
            hosts[APP],
            ADDRESSES[name],
            SENTINEL_PORT,
            ["AUTH", APP_USER, password],
            ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME],
        )
        if "replies" in answer and isinstance(answer["replies"][1], list):
            return answer["replies"][1]
    return []


@pytest.fixture
def primary(hosts, password) -> str:
    """The cache host the Sentinels name as the primary (settled: no failover in progress)."""
    deadline = time.monotonic() + 30
    while True:
        seen = primary_seen_by_app(hosts, password)
        names = [name for name, address in ADDRESSES.items() if seen and address == seen[0]]
        if names and role_of(hosts[names[0]])[0] == "master":
            return names[0]
        assert time.monotonic() < deadline, f"no settled primary within 30 s (Sentinels: {seen})"
        time.sleep(0.5)


def test_a_sentinel_runs_on_every_cache_host(hosts):
    for name in CACHES:
        host = hosts[name]
        assert host.service("redis-sentinel").is_running, name
        assert host.service("redis-sentinel").is_enabled, name
        listening = {
            line.split()[3]
            for line in host.run("ss -Hltn").stdout.splitlines()
            if line.split()[3].endswith(f":{SENTINEL_PORT}")
        }
        assert listening == {f"{ADDRESSES[name]}:{SENTINEL_PORT}", f"127.0.0.1:{SENTINEL_PORT}"}, (
            name
        )
        conf = host.file("/etc/redis/sentinel.conf")
        assert (conf.user, conf.group, conf.mode) == ("redis", "redis", 0o640)


def test_one_primary_and_two_replicas(hosts, primary):
    replicas = sorted(address for name, address in ADDRESSES.items() if name != primary)
    # test_redis.py has just killed and restarted the first primary: its replicas may be in the
    # middle of a full resynchronisation (Redis waits 5 s before a diskless one).
    deadline = time.monotonic() + 30
    while True:
        roles = {name: role_of(hosts[name]) for name in CACHES}
        settled = sorted(roles[primary][2::3]) == replicas and all(
            roles[name][:4] == ["slave", ADDRESSES[primary], str(PORT), "connected"]
            for name in CACHES
            if name != primary
        )
        if settled:
            break
        assert time.monotonic() < deadline, f"replication not settled within 30 s: {roles}"
        time.sleep(0.5)
    assert roles[primary][0] == "master"


def test_the_sentinels_agree_and_see_each_other(hosts, primary, replication_password):
    for name in CACHES:
        master = ask(
            hosts[name],
            "127.0.0.1",
            SENTINEL_PORT,
            ["AUTH", "sentinel", replication_password],
            ["SENTINEL", "MASTER", NAME],
        )[1]
        fields = dict(zip(master[::2], master[1::2], strict=True))
        assert (fields["ip"], fields["flags"]) == (ADDRESSES[primary], "master"), name
        assert (fields["num-slaves"], fields["num-other-sentinels"], fields["quorum"]) == (
            "2",
            "2",
            "2",
        ), name
        assert fields["down-after-milliseconds"] == str(
            ROLE_DEFAULTS["redis_sentinel_down_after_ms"]
        )


def test_the_app_finds_the_primary_and_may_do_nothing_else(hosts, primary, password):
    app = hosts[APP]
    address = ADDRESSES["redis-cache2"]
    answers = ask(
        app,
        address,
        SENTINEL_PORT,
        ["PING"],
        ["AUTH", APP_USER, password],
        ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME],
        ["SENTINEL", "FAILOVER", NAME],
        ["SENTINEL", "SET", NAME, "quorum", "1"],
        ["SENTINEL", "REMOVE", NAME],
        ["ACL", "LIST"],
    )
    assert answers[0]["error"].startswith("NOAUTH")
    assert answers[1] == "OK"
    assert answers[2] == [ADDRESSES[primary], str(PORT)]
    for refused in answers[3:]:
        assert refused["error"].startswith("NOPERM"), refused
    wrong = ask(app, address, SENTINEL_PORT, ["AUTH", APP_USER, password + "-wrong"])
    assert wrong[0]["error"].startswith("WRONGPASS")
    default = ask(app, address, SENTINEL_PORT, ["AUTH", "default", ""])
    assert default[0]["error"].startswith("WRONGPASS")


def test_other_groups_cannot_reach_the_sentinels(hosts):
    answer = send(hosts[LB], ADDRESSES["redis-cache"], SENTINEL_PORT, ["PING"])
    assert answer == {"connect": "timeout"}


def test_replicas_refuse_writes_and_the_server_cannot_rewrite_its_file(hosts, primary, password):
    app = hosts[APP]
    replica = next(name for name in CACHES if name != primary)
    written = ask(
        app,
        ADDRESSES[replica],
        PORT,
        ["AUTH", APP_USER, password],
        ["SET", "session:x", "1"],
    )
    assert isinstance(written[1], dict), f"{replica}, a replica of {primary}, took a write"
    assert written[1]["error"].startswith("READONLY")
    # CONFIG REWRITE (what a Sentinel sends after a failover) fails: /etc/redis is read-only to it.
    rewrite = hosts[primary].run("redis-admin CONFIG REWRITE")
    assert "ERR" in rewrite.stdout + rewrite.stderr, rewrite.stdout
    replication = hosts[replica].file("/etc/redis/replication.conf")
    assert (replication.user, replication.group, replication.mode) == ("root", "redis", 0o640)


def test_a_replica_is_promoted_when_the_primary_is_lost(hosts, primary, password):
    """The primary stopped: a replica is promoted within 10 s; a session written a second before
    is on it; the old primary, started again, becomes a replica of the new one."""
    app, old = hosts[APP], hosts[primary]
    login = ["AUTH", APP_USER, password]
    assert ask(app, ADDRESSES[primary], PORT, login, ["SET", "session:failover", "user=9"]) == [
        "OK",
        "OK",
    ]
    time.sleep(1)
    stopped = time.monotonic()
    assert old.run("systemctl stop redis-server.service").rc == 0
    try:
        promoted = None
        while time.monotonic() - stopped < 20:
            seen = primary_seen_by_app(hosts, password)
            if seen and seen[0] != ADDRESSES[primary]:
                promoted = seen
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - stopped
        print(f"failover: {promoted} promoted {elapsed:.1f} s after the primary stopped")
        assert promoted is not None, "no replica promoted within 20 s"
        assert elapsed <= 10, f"the promotion took {elapsed:.1f} s"
        new = next(name for name, address in ADDRESSES.items() if address == promoted[0])
        session = ask(
            app,
            promoted[0],
            PORT,
            login,
            ["GET", "session:failover"],
            ["SET", "session:after", "1"],
        )
        assert session == ["OK", "user=9", "OK"], session
    finally:
        assert old.run("systemctl start redis-server.service").rc == 0
    # Sentinel makes the returning primary a replica of the new one.
    deadline = time.monotonic() + 30
    while (role := role_of(old))[:3] != ["slave", promoted[0], str(PORT)]:
        assert time.monotonic() < deadline, f"the old primary is still {role} 30 s after it started"
        time.sleep(0.5)
    print(
        f"failover: the old primary replicates from {new}"
        f" {time.monotonic() - stopped:.1f} s after the stop"
    )
