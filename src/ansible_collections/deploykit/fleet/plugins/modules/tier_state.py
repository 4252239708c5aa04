#!/usr/bin/python
"""deploykit.fleet.tier_state: the part this host plays in its tier (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tier_state
short_description: Report this host's part in its tier (Redis, RabbitMQ, PostgreSQL)
description:
  - Read-only; for deploykit status. Each part asked for is reported, or its error (the task
    never fails because a service does not answer), as module_utils/tiers.py describes.
options:
  redis_port: {description: Redis's port on 127.0.0.1 (asks ROLE); unset, Redis is not asked., type: int}
  redis_admin_user: {description: The Redis administrator., type: str, default: admin}
  redis_admin_secret_file: {description: The file holding the administrator's password., type: path, default: /etc/redis/admin.secret}
  rabbitmq: {description: Ask RabbitMQ for its cluster's nodes., type: bool, default: false}
  postgresql_port: {description: PostgreSQL's port (asks primary or standby, and the lag); unset, not asked., type: int}
  address: {description: "This host's private address, returned as is (the services name their peers by address).", type: str, default: ""}
"""

RETURN = r"""
report: {description: "{address, redis, rabbitmq, postgresql}: each asked part's state, or {error}.", returned: always, type: dict}
"""

import subprocess
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.rabbitmq import Membership
from ansible_collections.deploykit.fleet.plugins.module_utils.sentinel import (
    Address,
    Client,
    RespError,
    Unreachable,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.tiers import redis_role

#: Seconds each question may take: a service that does not answer in this time is reported so.
TIMEOUT = 15


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(" ".join((result.stderr or result.stdout).split())[:300])
    return result.stdout


def redis_state(port: int, user: str, secret_file: str) -> dict[str, Any]:
    password = Path(secret_file).read_text().strip()
    with Client(Address("127.0.0.1", port), user, password) as client:
        return redis_role(client.call("ROLE"))


def rabbitmq_state() -> dict[str, Any]:
    membership = Membership.from_json(
        run(["rabbitmqctl", "-q", "cluster_status", "--formatter", "json"])
    )
    return {"nodes": sorted(membership.disk_nodes), "running": sorted(membership.running_nodes)}


def postgresql_state(port: int) -> dict[str, Any]:
    def query(sql: str) -> list[list[str]]:
        out = run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-XAtq",
                "-p",
                str(port),
                "-d",
                "postgres",
                "-F",
                "|",
                "-c",
                sql,
            ]
        )
        return [line.split("|") for line in out.splitlines() if line]

    if query("SELECT pg_is_in_recovery()")[0][0] == "f":
        rows = query(
            "SELECT client_addr, state, COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint "
            "FROM pg_stat_replication"
        )
        return {
            "role": "primary",
            "standbys": [{"address": row[0], "state": row[1], "lag": int(row[2])} for row in rows],
        }
    receiver = query("SELECT status, sender_host FROM pg_stat_wal_receiver")
    replay = query("SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())")
    seconds = replay[0][0] if replay and replay[0] else ""
    return {
        "role": "standby",
        "streaming": bool(receiver) and receiver[0][0] == "streaming",
        "source": receiver[0][1] if receiver else None,
        "replay_seconds": float(seconds) if seconds else None,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "redis_port": {"type": "int"},
            "redis_admin_user": {"type": "str", "default": "admin"},
            "redis_admin_secret_file": {"type": "path", "default": "/etc/redis/admin.secret"},
            "rabbitmq": {"type": "bool", "default": False},
            "postgresql_port": {"type": "int"},
            "address": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    report: dict[str, Any] = {"address": params["address"]}
    asks = {
        "redis": (
            lambda: redis_state(
                params["redis_port"], params["redis_admin_user"], params["redis_admin_secret_file"]
            )
        )
        if params["redis_port"]
        else None,
        "rabbitmq": rabbitmq_state if params["rabbitmq"] else None,
        "postgresql": (lambda: postgresql_state(params["postgresql_port"]))
        if params["postgresql_port"]
        else None,
    }
    for part, ask in asks.items():
        if ask is None:
            continue
        try:
            report[part] = ask()
        except (
            OSError,
            RuntimeError,
            ValueError,
            IndexError,
            RespError,
            Unreachable,
            subprocess.TimeoutExpired,
        ) as error:
            report[part] = {"error": str(error) or type(error).__name__}
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
