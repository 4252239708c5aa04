"""module_utils/sentinel.py against real Redis servers and Sentinels on loopback.

A primary, a replica and three Sentinels, started from this machine's redis-server (the shop's
test services install it) with the users the redis role gives them: the Sentinels start from the
role's first configuration (``default`` off, the Sentinels' own user) and everything else is set
by ``plan_sentinel``/``apply_sentinel``, as the module deploykit.fleet.redis_sentinel does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils.sentinel import (
    Address,
    Client,
    RespError,
    Watch,
    apply_sentinel,
    describe,
    find_primary,
    password_hash,
    plan_replica,
    plan_sentinel,
)

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS is None,
    reason="redis-server is not installed (examples/shop/scripts/test-services installs it)",
)

ADMIN, ADMIN_PW = "admin", "admin-pw"
APP, APP_PW = "app", "app-pw"
REPLICATION, SENTINEL, PEER_PW = "replication", "sentinel", "peer-pw"
NAME = "deploykit"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Group:
    primary: Address
    replica: Address
    sentinels: list[Address]
    directory: Path

    def watch(self, primary: Address | None = None) -> Watch:
        return Watch(NAME, primary or self.primary, 2, 1000, 5000, SENTINEL, PEER_PW)

    def sentinel(self, index: int = 0) -> Client:
        return Client(self.sentinels[index], SENTINEL, PEER_PW)

    def admin(self, address: Address) -> Client:
        return Client(address, ADMIN, ADMIN_PW)

    def sentinel_file(self, index: int) -> str:
        return (self.directory / f"sentinel{index}.conf").read_text()


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    """Users as the redis role writes them (users.acl.j2, sentinel.conf.j2)."""
    acl = tmp_path / "users.acl"
    acl.write_text(
        "user default off resetpass ~* &* +@all\n"
        f"user {ADMIN} on #{password_hash(ADMIN_PW)} ~* &* +@all\n"
        f"user {APP} on #{password_hash(APP_PW)} ~* &* +@all -@dangerous +info\n"
        f"user {REPLICATION} on #{password_hash(PEER_PW)} +psync +replconf +ping\n"
        f"user {SENTINEL} on #{password_hash(PEER_PW)} &__sentinel__:hello +multi +slaveof +ping"
        " +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill"
        " +script|kill\n"
    )
    processes: list[subprocess.Popen[bytes]] = []

    def start(config: Path, *extra: str) -> None:
        processes.append(
            subprocess.Popen(
                [str(REDIS), str(config), *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    primary, replica = Address("127.0.0.1", free_port()), Address("127.0.0.1", free_port())
    for role, address in (("primary", primary), ("replica", replica)):
        config = tmp_path / f"{role}.conf"
        config.write_text(
            f"port {address.port}\nbind 127.0.0.1\ndir {tmp_path}\ndbfilename {role}.rdb\n"
            f'aclfile {acl}\nsave ""\nappendonly no\n'
            # The replica starts as the role's first run leaves it: not replicating yet.
        )
        start(config)
        wait_for_port(address.port)
    sentinels = [Address("127.0.0.1", free_port()) for _ in range(3)]
    for index, address in enumerate(sentinels):
        config = tmp_path / f"sentinel{index}.conf"
        config.write_text(
            f"port {address.port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            "sentinel deny-scripts-reconfig yes\nuser default off\n"
            f"user {SENTINEL} on #{password_hash(PEER_PW)} ~* &* +@all\n"
            f"sentinel sentinel-user {SENTINEL}\nsentinel sentinel-pass {PEER_PW}\n"
        )
        start(config, "--sentinel")
        wait_for_port(address.port)
    yield Group(primary, replica, sentinels, tmp_path)
    for process in processes:
        process.kill()
        process.wait()


def watch_everywhere(group: Group) -> None:
    for index in range(3):
        with group.sentinel(index) as client:
            apply_sentinel(
                client,
                plan_sentinel(client, group.watch(), APP, APP_PW, group.sentinel_file(index)),
            )


def test_a_first_run_takes_the_inventory_s_primary(group: Group) -> None:
    answer = find_primary(group.sentinels, NAME, SENTINEL, PEER_PW, group.primary)
    assert (answer.primary, answer.source) == (group.primary, "inventory")
    assert all(text == f"does not watch {NAME}" for text in answer.answers.values())


def test_no_sentinel_answering_is_said(group: Group) -> None:
    dead = Address("127.0.0.1", free_port())
    answer = find_primary([dead], NAME, SENTINEL, PEER_PW, group.primary, timeout=0.5)
    assert answer.source == "inventory"
    assert answer.answers[str(dead)].startswith("no answer")


def test_replica_plan_applies_once(group: Group) -> None:
    with group.admin(group.replica) as replica:
        plan = plan_replica(replica, group.primary, REPLICATION, PEER_PW)
        assert plan == [
            ["CONFIG", "SET", "masteruser", REPLICATION],
            ["CONFIG", "SET", "masterauth", PEER_PW],
            ["REPLICAOF", "127.0.0.1", group.primary.port],
        ]
        for command in plan:
            replica.call(*command)
        assert plan_replica(replica, group.primary, REPLICATION, PEER_PW) == []
    with group.admin(group.primary) as primary:
        # The primary gets the credentials too (it may be a replica after a failover).
        assert plan_replica(primary, None, REPLICATION, PEER_PW) == [
            ["CONFIG", "SET", "masteruser", REPLICATION],
            ["CONFIG", "SET", "masterauth", PEER_PW],
        ]


def test_sentinel_plan_sets_users_watch_and_credentials_then_nothing(group: Group) -> None:
    with group.sentinel() as client:
        plan = plan_sentinel(client, group.watch(), APP, APP_PW, group.sentinel_file(0))
        shown = [describe(command, [APP_PW, PEER_PW]) for command in plan]
        assert shown[0].startswith(f"ACL SETUSER {APP} reset on ******** -@all")
        assert f"SENTINEL MONITOR {NAME} 127.0.0.1 {group.primary.port} 2" in shown
        assert any(
            s.startswith(f"SENTINEL SET {NAME}") and "auth-pass ********" in s for s in shown
        )
        assert APP_PW not in " ".join(shown) and PEER_PW not in " ".join(shown)
        apply_sentinel(client, plan)
        # Saved: the file holds the watch, and a second plan finds nothing to do.
        assert f"sentinel monitor {NAME} 127.0.0.1 {group.primary.port} 2" in group.sentinel_file(0)
        assert plan_sentinel(client, group.watch(), APP, APP_PW, group.sentinel_file(0)) == []
        # A changed setting is one SENTINEL SET; a changed password one ACL SETUSER.
        slower = Watch(NAME, group.primary, 2, 3000, 5000, SENTINEL, PEER_PW)
        assert plan_sentinel(client, slower, APP, APP_PW, group.sentinel_file(0)) == [
            ["SENTINEL", "SET", NAME, "down-after-milliseconds", 3000]
        ]
        rotated = plan_sentinel(client, group.watch(), APP, "new-app-pw", group.sentinel_file(0))
        assert [command[:3] for command in rotated] == [["ACL", "SETUSER", APP]]


def test_the_app_user_finds_the_primary_and_nothing_more(group: Group) -> None:
    watch_everywhere(group)
    with Client(group.sentinels[1], APP, APP_PW) as app:
        assert app.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME) == [
            "127.0.0.1",
            str(group.primary.port),
        ]
        for command in (
            ["SENTINEL", "FAILOVER", NAME],
            ["SENTINEL", "REMOVE", NAME],
            ["ACL", "LIST"],
        ):
            with pytest.raises(RespError, match="NOPERM"):
                app.call(*command)
    with pytest.raises(RespError, match="WRONGPASS"):
        Client(group.sentinels[1], APP, "wrong")


def test_after_a_failover_the_sentinels_answer_and_a_watch_keeps_their_choice(group: Group) -> None:
    with group.admin(group.replica) as replica:
        for command in plan_replica(replica, group.primary, REPLICATION, PEER_PW):
            replica.call(*command)
        deadline = time.monotonic() + 10
        while replica.call("ROLE")[3] != "connected":
            assert time.monotonic() < deadline, "the replica did not connect within 10 s"
            time.sleep(0.1)
    watch_everywhere(group)
    deadline = time.monotonic() + 10
    while True:  # the Sentinels learn of the replica from the primary's INFO
        with group.sentinel() as client:
            if client.call("SENTINEL", "REPLICAS", NAME):
                break
        assert time.monotonic() < deadline, "the Sentinels found no replica within 10 s"
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    with group.sentinel() as client:
        while True:  # NOGOODSLAVE until the Sentinel has the replica's INFO (every 10 s)
            try:
                client.call("SENTINEL", "FAILOVER", NAME)
                break
            except RespError as error:
                assert time.monotonic() < deadline, f"no failover accepted within 20 s: {error}"
                time.sleep(0.5)
    deadline = time.monotonic() + 15
    while (
        answer := find_primary(group.sentinels, NAME, SENTINEL, PEER_PW, group.primary)
    ).primary != group.replica:
        assert time.monotonic() < deadline, f"no failover within 15 s: {answer.answers}"
        time.sleep(0.2)
    assert answer.source == "sentinel"
    # The role, run again with the inventory's (now stale) primary, changes no watch.
    with group.sentinel(2) as client:
        stale = group.watch(group.primary)
        plan = plan_sentinel(client, stale, APP, APP_PW, group.sentinel_file(2))
        assert not any(command[:2] == ["SENTINEL", "MONITOR"] for command in plan)
