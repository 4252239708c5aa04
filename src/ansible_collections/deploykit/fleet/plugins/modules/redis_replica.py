#!/usr/bin/python
"""deploykit.fleet.redis_replica: the local Redis replicates from the primary (or is it)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_replica
short_description: Make the local Redis the primary, or a replica of the primary, at runtime
description:
  - Sets the replication credentials (masteruser, masterauth) and REPLICAOF the primary, or
    REPLICAOF NO ONE when O(primary) is empty (this host is the primary), only where the running
    server differs. No restart: the role's file says the same for the next start.
  - Logs in as the administrator, whose password is read from O(admin_secret_file) on the host.
options:
  port: {description: Redis's port on 127.0.0.1., type: int, default: 6379}
  admin_user: {description: The administrator., type: str, required: true}
  admin_secret_file: {description: The file holding the administrator's password., type: path, required: true}
  primary: {description: The primary (C(host:port)) to replicate from; empty on the primary itself., type: str, default: ""}
  user: {description: The replication user., type: str, required: true}
  password: {description: Its password., type: str, required: true, no_log: true}
"""

RETURN = r"""
commands: {description: What was run (passwords hidden)., returned: success, type: list}
role: {description: The server's role afterwards (C(master) or C(slave))., returned: success, type: str}
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.sentinel import (
    Address,
    Client,
    RespError,
    Unreachable,
    describe,
    plan_replica,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "port": {"type": "int", "default": 6379},
            "admin_user": {"type": "str", "required": True},
            "admin_secret_file": {"type": "path", "required": True},
            "primary": {"type": "str", "default": ""},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    primary = None
    if params["primary"]:
        host, _, port = params["primary"].rpartition(":")
        primary = Address(host, int(port))
    server = Address("127.0.0.1", params["port"])
    try:
        admin_password = Path(params["admin_secret_file"]).read_text().strip()
        with Client(server, params["admin_user"], admin_password) as client:
            commands = plan_replica(client, primary, params["user"], params["password"])
            if not module.check_mode:
                for command in commands:
                    client.call(*command)
            role = client.call("ROLE")[0]
    except (OSError, Unreachable, RespError) as error:
        module.fail_json(msg=f"Redis on {server}: {error}")
    module.exit_json(
        changed=bool(commands),
        commands=[describe(command, [params["password"]]) for command in commands],
        role=role,
    )


if __name__ == "__main__":
    main()
