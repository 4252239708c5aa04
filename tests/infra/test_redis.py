"""Testinfra checks of the redis role, run by the molecule scenario ``redis``.

The scenario has three hosts, each in a different inventory group:

* ``redis-cache`` (cache): runs Redis (the common role, then the redis role);
* ``redis-app`` (app): an allowed client; it has no redis-cli, so the checks speak RESP to Redis
  from it with a small Python client (``RESP_CLIENT`` below);
* ``redis-lb`` (lb): not allowed; the firewall drops its connections to the Redis port.

Every claim about access is proved from the outside (the app host, over the network); the
configuration is read back from the running server as the administrator (``redis-admin`` on the
cache host). The checks that restart or kill Redis come last.
"""

from __future__ import annotations

import json
import time

import pytest
from lab_probes import ROOT, ipv4, only_in_scenario, role_defaults, scenario_hosts

SCENARIO = "redis"

pytestmark = only_in_scenario(SCENARIO)

ROLE_DEFAULTS = role_defaults("redis")
PORT = ROLE_DEFAULTS["redis_port"]
APP_USER = ROLE_DEFAULTS["redis_app_user"]
ADMIN_USER = ROLE_DEFAULTS["redis_admin_user"]

CACHE, APP, LB = "redis-cache", "redis-app", "redis-lb"

# Runs on a client host: python3 -c RESP_CLIENT HOST PORT COMMANDS-JSON. Sends each command (a list
# of strings) in RESP and prints the replies as JSON: {"replies": [...]} where an error reply is
# {"error": "..."}, or {"connect": "timeout" | "refused" | "..."} when no connection is made.
# An item {"repeat": N, "command": [...]} sends the command N times in one pipeline ("{i}" in an
# argument is replaced by the counter) and gives {"ok": n, "errors": [first errors]}.
# RESP is spoken by the project's own client (module_utils/sentinel.py, standard library only):
# its source runs on the host, followed by the few lines that drive it.
SENTINEL_CLIENT = ROOT / "src/ansible_collections/deploykit/fleet/plugins/module_utils/sentinel.py"
RESP_DRIVER = r"""
import json, sys

encode = _encode


def plain(reply):
    if isinstance(reply, RespError):
        return {"error": str(reply)}
    return [plain(item) for item in reply] if isinstance(reply, list) else reply


def read(stream):
    return plain(_read(stream))


host, port, commands = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
try:
    sock = socket.create_connection((host, port), timeout=3)
except socket.timeout:
    print(json.dumps({"connect": "timeout"})); sys.exit(0)
except ConnectionRefusedError:
    print(json.dumps({"connect": "refused"})); sys.exit(0)
except OSError as error:
    print(json.dumps({"connect": str(error)})); sys.exit(0)
sock.settimeout(10)
stream = sock.makefile("rb")
replies = []
for item in commands:
    if isinstance(item, dict):
        count, command = item["repeat"], item["command"]
        batch = (encode([a.replace("{i}", str(i)) for a in command]) for i in range(count))
        sock.sendall(b"".join(batch))
        ok, errors = 0, []
        for _ in range(count):
            reply = read(stream)
            if isinstance(reply, dict):
                errors.append(reply["error"])
            else:
                ok += 1
        replies.append({"ok": ok, "errors": errors[:3]})
    else:
        sock.sendall(encode(item))
        replies.append(read(stream))
print(json.dumps({"replies": replies}))
"""
RESP_CLIENT = SENTINEL_CLIENT.read_text(encoding="utf-8") + RESP_DRIVER


def resp(source, address: str, *commands) -> dict:
    """Send ``commands`` from host ``source`` to Redis at address:PORT, in one connection."""
    result = source.run(
        "python3 -c %s %s %s %s", RESP_CLIENT, address, str(PORT), json.dumps(list(commands))
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def replies(source, address: str, *commands) -> list:
    """The replies to ``commands``; fails if no connection could be made."""
    answer = resp(source, address, *commands)
    assert "replies" in answer, f"no connection to {address}:{PORT}: {answer}"
    return answer["replies"]


def error(reply) -> str:
    assert isinstance(reply, dict) and "error" in reply, f"expected an error reply, got {reply!r}"
    return reply["error"]


def admin(cache, *args: str) -> str:
    """redis-cli as the administrator on the cache host (the role's redis-admin)."""
    result = cache.run("redis-admin " + " ".join(["%s"] * len(args)), *args)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def info(cache, section: str) -> dict[str, str]:
    lines = admin(cache, "INFO", section).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def restart_redis(cache) -> None:
    """A clean restart (the AOF is replayed), answered again before returning."""
    assert cache.run("systemctl restart redis-server.service").rc == 0
    wait_for_redis(cache)


def wait_for_redis(cache, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cache.run("redis-admin PING")
        if result.rc == 0 and result.stdout.strip() == "PONG":
            return
        time.sleep(0.5)
    pytest.fail(f"Redis did not answer PING within {timeout} s")


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    return scenario_hosts(request, CACHE, APP, LB)


@pytest.fixture(scope="module")
def cache(lab):
    return lab[CACHE]


@pytest.fixture(scope="module")
def address(cache) -> str:
    """The cache host's address on the lab network: the one its default route leaves from."""
    return ipv4(cache)


@pytest.fixture(scope="module")
def password(cache) -> str:
    """redis_password, as the inventory sets it (a lab value)."""
    return cache.ansible.get_variables()["redis_password"]


@pytest.fixture(scope="module")
def login(password) -> list[str]:
    return ["AUTH", APP_USER, password]


# --- the service on the cache host ---------------------------------------------------------------


def test_redis_is_installed_running_and_enabled(cache):
    assert cache.package("redis-server").is_installed
    assert cache.package("redis-server").version.startswith("5:7.0")
    service = cache.service("redis-server")
    assert service.is_running
    assert service.is_enabled


def test_container_dropin_lets_the_unit_run(cache):
    # This is a container: the drop-in exists, and systemd applies it.
    dropin = cache.file("/etc/systemd/system/redis-server.service.d/container.conf")
    assert dropin.exists
    assert dropin.content_string.startswith("#")
    assert "PrivateUsers=false" in dropin.content_string
    shown = cache.run("systemctl show -p PrivateUsers -p ProtectProc redis-server.service").stdout
    assert "PrivateUsers=no" in shown
    assert "ProtectProc=invisible" in shown  # the rest of Debian's sandbox stays


def test_starts_after_the_network_is_up(cache):
    # Bound to the private address, Redis must not start before that address exists.
    assert cache.file("/etc/systemd/system/redis-server.service.d/network-online.conf").exists
    after = cache.run("systemctl show -p After -p Wants redis-server.service").stdout
    assert after.count("network-online.target") == 2, after


def test_listens_on_the_private_address_and_loopback_only(cache, address):
    result = cache.run("ss -Hltn")
    assert result.rc == 0, result.stderr
    local = {line.split()[3] for line in result.stdout.splitlines() if line.strip()}
    on_port = {a for a in local if a.rsplit(":", 1)[1] == str(PORT)}
    assert on_port == {f"{address}:{PORT}", f"127.0.0.1:{PORT}"}


def test_config_is_managed(cache, address):
    conf = cache.file("/etc/redis/redis.conf")
    assert conf.content_string.startswith("#")
    assert "Ansible managed" in conf.content_string.splitlines()[1]
    assert conf.user == "redis"
    assert conf.group == "redis"
    assert conf.mode == 0o640
    assert admin(cache, "CONFIG", "GET", "bind").splitlines()[1] == f"{address} 127.0.0.1"
    assert admin(cache, "CONFIG", "GET", "protected-mode").splitlines()[1] == "yes"


def test_memory_limit_and_volatile_policy(cache):
    policy = admin(cache, "CONFIG", "GET", "maxmemory-policy").splitlines()[1]
    assert policy == ROLE_DEFAULTS["redis_maxmemory_policy"]
    assert policy.startswith("volatile-")
    assert admin(cache, "CONFIG", "GET", "maxmemory").splitlines()[1] == str(256 * 1024 * 1024)


def test_aof_is_on(cache):
    assert admin(cache, "CONFIG", "GET", "appendonly").splitlines()[1] == "yes"
    assert admin(cache, "CONFIG", "GET", "appendfsync").splitlines()[1] == "everysec"
    assert info(cache, "persistence")["aof_enabled"] == "1"
    assert cache.file("/var/lib/redis/appendonlydir").is_directory


def test_secrets_on_disk(cache, password):
    acl = cache.file("/etc/redis/users.acl")
    assert (acl.user, acl.group, acl.mode) == ("redis", "redis", 0o640)
    assert password not in acl.content_string  # hashes only
    secret = cache.file("/etc/redis/admin.secret")
    assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600)
    assert len(secret.content_string.strip()) >= 32  # generated: redis_admin_password is unset
    assert secret.content_string.strip() not in acl.content_string
    tool = cache.file("/usr/local/sbin/redis-admin")
    assert (tool.user, tool.mode) == ("root", 0o750)


def test_acl_users(cache):
    users = {line.split()[1]: line for line in admin(cache, "ACL", "LIST").splitlines()}
    # The scenario runs with redis_sentinel: the replicas' and the Sentinels' users too.
    replication = {ROLE_DEFAULTS["redis_replication_user"], "sentinel"}
    assert set(users) == {"default", ADMIN_USER, APP_USER} | replication
    assert " off " in users["default"] + " "
    assert " on " in users[APP_USER]
    assert "nopass" not in "".join(users.values())


# --- access, from the outside --------------------------------------------------------------------


def test_unauthenticated_clients_are_refused(lab, address):
    ping, get, info_reply = replies(lab[APP], address, ["PING"], ["GET", "session:x"], ["INFO"])
    for reply in (ping, get, info_reply):
        assert error(reply).startswith("NOAUTH")


def test_default_user_and_wrong_passwords_are_refused(lab, address, password):
    answers = replies(
        lab[APP],
        address,
        ["AUTH", "default", ""],
        ["AUTH", "default", password],
        ["AUTH", APP_USER, password + "-wrong"],
        ["AUTH", password],  # the legacy form logs in as `default`: off
        ["HELLO", "2", "AUTH", "default", "anything"],
        ["PING"],
    )
    for reply in answers[:5]:
        assert error(reply).startswith("WRONGPASS"), reply
    assert error(answers[5]).startswith("NOAUTH")


def test_app_user_works(lab, address, login):
    answers = replies(
        lab[APP],
        address,
        login,
        ["PING"],
        ["ACL", "WHOAMI"],
        ["SET", "cache:molecule:page", "<html>", "EX", "60"],
        ["GET", "cache:molecule:page"],
        ["TTL", "cache:molecule:page"],
        ["SCAN", "0", "MATCH", "cache:molecule:*", "COUNT", "100000"],
        ["INFO", "server"],
        ["DEL", "cache:molecule:page"],
    )
    assert answers[:5] == ["OK", "PONG", APP_USER, "OK", "<html>"]
    assert 0 < answers[5] <= 60
    assert "cache:molecule:page" in answers[6][1]
    assert "redis_version:7.0" in answers[7]
    assert answers[8] == 1


@pytest.mark.parametrize(
    "command",
    [
        ["FLUSHALL"],
        ["FLUSHDB"],
        ["CONFIG", "GET", "maxmemory"],
        ["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        ["KEYS", "*"],
        ["DEBUG", "SLEEP", "0"],
        ["SHUTDOWN"],
        ["MONITOR"],
        ["BGSAVE"],
        ["REPLICAOF", "203.0.113.1", "6379"],
        ["ACL", "SETUSER", "intruder", "on", "nopass", "+@all"],
        ["CLIENT", "KILL", "TYPE", "normal"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_app_user_is_denied_dangerous_commands(lab, cache, address, login, command):
    logged_in, reply = replies(lab[APP], address, login, command)
    assert logged_in == "OK"
    if command[0] == "DEBUG":
        # enable-debug-command no refuses DEBUG to everyone before the ACL is even consulted.
        assert error(reply).startswith(("NOPERM", "ERR DEBUG command not allowed")), reply
    else:
        assert error(reply).startswith("NOPERM"), reply
    # And the ACL itself denies it (what the app user would meet if the command were enabled).
    dryrun = admin(cache, "ACL", "DRYRUN", APP_USER, *command)
    assert "no permissions" in dryrun, dryrun


def test_app_group_reaches_the_port(lab, address):
    assert "replies" in resp(lab[APP], address, ["PING"])


def test_other_groups_cannot_connect(lab, address):
    assert resp(lab[LB], address, ["PING"]) == {"connect": "timeout"}


# --- eviction: cache keys go, sessions stay ------------------------------------------------------


def test_eviction_drops_cache_keys_and_keeps_sessions(lab, cache, address, login):
    """At the memory limit, keys with a TTL are evicted, keys without one are not.

    The limit is lowered for this test (CONFIG SET, as the administrator) to just above what is
    used (and the replication backlog), then 3 MB of cache keys (with a TTL) are written; the
    role's limit is put back after.
    """
    app = lab[APP]
    configured = admin(cache, "CONFIG", "GET", "maxmemory").splitlines()[1]
    assert replies(app, address, login, ["SET", "session:evict-proof", "alice"]) == ["OK", "OK"]
    evicted_before = int(info(cache, "stats")["evicted_keys"])
    used = int(info(cache, "memory")["used_memory"])
    # With replicas (the scenario runs with redis_sentinel), the replication backlog fills up to
    # its size as the keys are written and is never evicted: leave room for it.
    backlog = int(admin(cache, "CONFIG", "GET", "repl-backlog-size").splitlines()[1])
    assert admin(cache, "CONFIG", "SET", "maxmemory", str(used + backlog + 1024 * 1024)) == "OK"
    try:
        fill = {"repeat": 3000, "command": ["SET", "cache:filler:{i}", "x" * 1000, "EX", "600"]}
        logged_in, filled, session = replies(
            app, address, login, fill, ["GET", "session:evict-proof"]
        )
    finally:
        assert admin(cache, "CONFIG", "SET", "maxmemory", configured) == "OK"
    assert logged_in == "OK"
    assert filled == {"ok": 3000, "errors": []}  # eviction made room: no write refused
    assert int(info(cache, "stats")["evicted_keys"]) > evicted_before
    assert session == "alice"
    remaining = replies(
        app, address, login, ["EXISTS", *[f"cache:filler:{i}" for i in range(3000)]]
    )
    assert remaining[1] < 3000
    admin(cache, "DEL", "session:evict-proof")


# --- persistence: last, since they restart and kill Redis ---------------------------------------


def test_session_survives_a_restart(lab, cache, address, login):
    app = lab[APP]
    written = replies(
        app,
        address,
        login,
        ["SET", "session:molecule-restart", "user=42"],
        ["SET", "cache:molecule-restart", "page", "EX", "3600"],
    )
    assert written == ["OK", "OK", "OK"]
    restart_redis(cache)
    after = replies(
        app,
        address,
        login,
        ["GET", "session:molecule-restart"],
        ["GET", "cache:molecule-restart"],
        ["TTL", "cache:molecule-restart"],
    )
    assert after[1:3] == ["user=42", "page"]
    assert 0 < after[3] <= 3600


def test_a_transaction_survives_a_restart(lab, cache, address, login):
    """Redis 7.0 replays the AOF as `default` and re-checks EXEC against its ACL: the role keeps
    that user off but permitted, or every MULTI/EXEC is refused at startup (redis/redis#14541)."""
    app = lab[APP]
    written = replies(
        app,
        address,
        login,
        ["MULTI"],
        ["SET", "session:molecule-multi", "user=7"],
        ["ZADD", "sessions:molecule-expiry", "1", "molecule-multi"],
        ["EXEC"],
    )
    assert written == ["OK", "OK", "QUEUED", "QUEUED", ["OK", 1]], written
    restart_redis(cache)
    after = replies(
        app,
        address,
        login,
        ["GET", "session:molecule-multi"],
        ["ZSCORE", "sessions:molecule-expiry", "molecule-multi"],
    )
    assert after[1:] == ["user=7", "1"], after
    log = cache.run("journalctl -u redis-server --no-pager -n 200; cat /var/log/redis/*.log")
    assert "AOF-loading-client" not in log.stdout


def test_session_survives_a_crash_through_the_aof(lab, cache, address, login):
    """SIGKILL: no shutdown save, no RDB snapshot due yet; only the AOF has the key."""
    app = lab[APP]
    assert replies(app, address, login, ["SET", "session:molecule-crash", "user=7"]) == ["OK", "OK"]
    # appendfsync everysec: written within a second or two (longer while an fsync is slow).
    aof = cache.run(
        "timeout 10 sh -c 'until grep -q session:molecule-crash"
        " /var/lib/redis/appendonlydir/*.incr.aof; do sleep 0.2; done'"
    )
    assert aof.rc == 0, "the key is not in the AOF after 10 s"
    pid = cache.run("systemctl show -p MainPID --value redis-server.service").stdout.strip()
    assert cache.run("kill -KILL %s", pid).rc == 0
    # Debian's unit has Restart=always: systemd starts Redis again, which replays the AOF.
    show = "systemctl show -p MainPID --value redis-server.service"
    started = time.monotonic()
    while (new_pid := cache.run(show).stdout.strip()) in ("0", pid):
        waited = time.monotonic() - started
        assert waited < 30, f"systemd did not start Redis again in {waited:.0f} s ({new_pid})"
        time.sleep(0.5)
    wait_for_redis(cache)
    assert replies(app, address, login, ["GET", "session:molecule-crash"]) == ["OK", "user=7"]
