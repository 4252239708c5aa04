"""The shop on a Redis watched by Sentinels (REDIS_SENTINELS, REDIS_MASTER_NAME).

Real servers on loopback: a primary, a replica and three Sentinels, started from this machine's
redis-server (scripts/test-services installs it), with the users deploykit's redis role gives
them (the application may only ask a Sentinel where the primary is). The primary is killed while
a user is logged in: during the gap the shop answers with its own 503, quickly; once a Sentinel
has promoted the replica, the user is still logged in (the session was replicated before the
kill) and new logins work.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from shop.settings import ConfigError, Settings, parse_sentinels
from shop_test_support import unavailable

NAME = "shop-test"
APP_PW = "app-pw"
PEER_PW = "peer-pw"
COOKIE = "shop_session"
#: What deploykit's redis role lets the application do on a Sentinel.
SENTINEL_APP_RULES = (
    "-@all +auth +hello +ping +client|setname +sentinel|get-master-addr-by-name +sentinel|masters"
    " +sentinel|master +sentinel|replicas +sentinel|slaves +sentinel|sentinels"
)


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails at the deadline, naming ``what``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - started


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[dict[str, object]]:
    server = shutil.which("redis-server")
    if server is None:
        unavailable("Redis Sentinel", "redis-server is not installed (scripts/test-services)")
    acl = tmp_path / "users.acl"
    acl.write_text(
        "user default off resetpass ~* &* +@all\n"
        f"user app on #{sha(APP_PW)} ~* &* +@all -@dangerous +info\n"
        f"user replication on #{sha(PEER_PW)} +psync +replconf +ping\n"
        f"user sentinel on #{sha(PEER_PW)} ~* &* +@all\n"
    )
    primary, replica = free_port(), free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, port, extra in (
        ("primary", primary, ""),
        ("replica", replica, f"replicaof 127.0.0.1 {primary}\n"),
    ):
        config = tmp_path / f"{name}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\ndbfilename {name}.rdb\n"
            f"logfile {tmp_path}/{name}.log\n"
            f'aclfile {acl}\nsave ""\nappendonly no\nmasteruser replication\n'
            f"masterauth {PEER_PW}\n{extra}"
        )
        processes[name] = subprocess.Popen([server, str(config)], stdout=subprocess.DEVNULL)
        wait_for(lambda port=port: listening(port), 10, f"redis-server on {port}")
    # Redis 7 waits 5 s (repl-diskless-sync-delay) before the replica's first full sync.
    replica_client = redis.Redis(port=replica, username="app", password=APP_PW)
    wait_for(
        lambda: replica_client.info("replication").get("master_link_status") == "up",
        30,
        "the replica in sync with the primary",
    )
    replica_client.close()
    sentinels = [free_port() for _ in range(3)]
    for index, port in enumerate(sentinels):
        config = tmp_path / f"sentinel{index}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path}/sentinel{index}.log\n"
            "user default off\n"
            f"user sentinel on #{sha(PEER_PW)} ~* &* +@all\n"
            f"user app on #{sha(APP_PW)} {SENTINEL_APP_RULES}\n"
            f"sentinel sentinel-user sentinel\nsentinel sentinel-pass {PEER_PW}\n"
            f"sentinel monitor {NAME} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {NAME} 1000\n"
            f"sentinel failover-timeout {NAME} 5000\n"
            f"sentinel auth-user {NAME} sentinel\nsentinel auth-pass {NAME} {PEER_PW}\n"
        )
        processes[f"sentinel{index}"] = subprocess.Popen(
            [server, str(config), "--sentinel"], stdout=subprocess.DEVNULL
        )
        wait_for(lambda port=port: listening(port), 10, f"Sentinel on {port}")
    yield {"primary": primary, "replica": replica, "sentinels": sentinels, "processes": processes}
    for process in processes.values():
        process.kill()
        process.wait()


def test_sentinels_are_parsed() -> None:
    assert parse_sentinels("") == ()
    assert parse_sentinels("10.0.0.1:26379, 10.0.0.2:26379") == (
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26379),
    )
    with pytest.raises(ConfigError, match=r"REDIS_SENTINELS: '10\.0\.0\.1' is not host:port"):
        parse_sentinels("10.0.0.1")
    env = {"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_MASTER_NAME": ""}
    with pytest.raises(ConfigError, match="REDIS_MASTER_NAME is empty"):
        Settings.from_env(env, required=())


def test_logged_in_users_survive_the_primary_s_loss(
    sentinel_group: dict[str, object], make_app: Callable[..., Flask]
) -> None:
    sentinels = sentinel_group["sentinels"]
    assert isinstance(sentinels, list)
    app = make_app(
        redis_url=f"redis://app:{APP_PW}@127.0.0.1:1/0",  # the host is not used with Sentinels
        redis_sentinels=tuple(("127.0.0.1", port) for port in sentinels),
        redis_master_name=NAME,
        secret_key=secrets.token_urlsafe(32),
    )
    client = app.test_client()
    assert client.post("/login", json={"user": "ann"}).status_code == 200
    assert client.get("/me").json["user"] == "ann"  # type: ignore[index]
    time.sleep(1)  # replicated long before the loss
    processes = sentinel_group["processes"]
    assert isinstance(processes, dict)
    processes["primary"].send_signal(signal.SIGKILL)
    killed = time.monotonic()

    # The gap: the shop's own answer (503 or 200 once promoted), never a hang.
    answers: list[int] = []

    def recovered() -> bool:
        started = time.monotonic()
        response = client.get("/me")
        assert time.monotonic() - started < 5, "a request hung during the failover"
        answers.append(response.status_code)
        return response.status_code == 200

    waited = wait_for(recovered, 15, "the user is back")
    print(
        f"sentinel failover: /me answered again {waited:.1f} s after the kill"
        f" ({answers.count(503)} x 503 before)"
    )
    assert set(answers) <= {503, 200}, answers
    assert client.get("/me").json["user"] == "ann"  # type: ignore[index]
    assert time.monotonic() - killed < 15
    # New logins go to the promoted replica.
    other = app.test_client()
    assert other.post("/login", json={"user": "bob"}).status_code == 200
    assert other.get("/me").json["user"] == "bob"  # type: ignore[index]


def test_a_sentinel_that_does_not_answer_is_passed_over_at_once(
    sentinel_group: dict[str, object], make_app: Callable[..., Flask]
) -> None:
    # A lost host's Sentinel sends no reset: a socket that accepts and never answers is one. It
    # is listed first; the shop must go on to the next Sentinel within its socket timeout
    # (0.5 s), not retry it with a backoff of seconds.
    sentinels = sentinel_group["sentinels"]
    assert isinstance(sentinels, list)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        app = make_app(
            redis_url=f"redis://app:{APP_PW}@127.0.0.1:1/0",
            redis_sentinels=(silent.getsockname(), *(("127.0.0.1", port) for port in sentinels)),
            redis_master_name=NAME,
            secret_key=secrets.token_urlsafe(32),
        )
        client = app.test_client()
        started = time.monotonic()
        assert client.post("/login", json={"user": "cy"}).status_code == 200
        assert client.get("/me").json["user"] == "cy"  # type: ignore[index]
        elapsed = time.monotonic() - started
    print(f"a silent Sentinel first in the list: login and /me in {elapsed:.2f} s")
    assert elapsed < 1.5, elapsed
