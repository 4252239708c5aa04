#!/usr/bin/python
"""deploykit.fleet.redis_sentinel: what the local Sentinel watches, and who may ask it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_sentinel
short_description: Make the local Redis Sentinel watch the primary with the given users and timeouts
description:
  - Sets, through the Sentinel's own commands, its users (the application's, limited to finding
    the primary; the Sentinels' own), the credentials the Sentinels use with each other and with
    Redis, and the watched primary (SENTINEL MONITOR once, then SENTINEL SET for the quorum and the
    timeouts); then saves them with SENTINEL FLUSHCONFIG. Sentinel rewrites its file itself, so
    the file is never templated after its first version.
  - An existing watch keeps the primary Sentinel knows (a failover's choice); O(primary) is used
    only when the Sentinel does not watch O(name) yet.
  - In check mode, reports what it would change (it creates and deletes a scratch ACL user to
    compare the users as the server normalises them).
options:
  port: {description: The Sentinel's port on 127.0.0.1., type: int, default: 26379}
  config_file: {description: The Sentinel's file (read for the passwords it holds)., type: path, default: /etc/redis/sentinel.conf}
  name: {description: The name the primary is watched under., type: str, required: true}
  primary: {description: The primary (C(host:port)) for a new watch., type: str, required: true}
  quorum: {description: Sentinels that must agree the primary is down., type: int, required: true}
  down_after_ms: {description: Milliseconds without an answer before a Sentinel calls the primary down., type: int, required: true}
  failover_timeout_ms: {description: Sentinel's failover-timeout., type: int, required: true}
  user: {description: The Sentinels' user (on the Sentinels and on Redis)., type: str, required: true}
  password: {description: Its password., type: str, required: true, no_log: true}
  app_user: {description: The application's user., type: str, required: true}
  app_password: {description: Its password., type: str, required: true, no_log: true}
"""

RETURN = r"""
commands: {description: What was run (passwords hidden)., returned: success, type: list}
primary: {description: The primary the Sentinel watches (C(host:port))., returned: success, type: str}
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.sentinel import (
    Address,
    Client,
    RespError,
    Unreachable,
    Watch,
    apply_sentinel,
    describe,
    pairs,
    plan_sentinel,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "port": {"type": "int", "default": 26379},
            "config_file": {"type": "path", "default": "/etc/redis/sentinel.conf"},
            "name": {"type": "str", "required": True},
            "primary": {"type": "str", "required": True},
            "quorum": {"type": "int", "required": True},
            "down_after_ms": {"type": "int", "required": True},
            "failover_timeout_ms": {"type": "int", "required": True},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "app_user": {"type": "str", "required": True},
            "app_password": {"type": "str", "required": True, "no_log": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    host, _, port = params["primary"].rpartition(":")
    watch = Watch(
        name=params["name"],
        primary=Address(host, int(port)),
        quorum=params["quorum"],
        down_after_ms=params["down_after_ms"],
        failover_timeout_ms=params["failover_timeout_ms"],
        user=params["user"],
        password=params["password"],
    )
    secrets = [params["password"], params["app_password"]]
    sentinel = Address("127.0.0.1", params["port"])
    try:
        config_text = Path(params["config_file"]).read_text()
        with Client(sentinel, watch.user, watch.password) as client:
            commands = plan_sentinel(
                client, watch, params["app_user"], params["app_password"], config_text
            )
            if not module.check_mode:
                apply_sentinel(client, commands)
            if module.check_mode and any(c[:2] == ["SENTINEL", "MONITOR"] for c in commands):
                watched = {"ip": watch.primary.host, "port": watch.primary.port}
            else:
                watched = pairs(client.call("SENTINEL", "MASTER", watch.name))
    except (OSError, Unreachable) as error:
        module.fail_json(msg=f"Sentinel on {sentinel}: {error}")
    except RespError as error:
        # WRONGPASS: the Sentinel's file holds another password for the Sentinels' user (the
        # password changed after the first run): that file is Sentinel's state, not the role's.
        module.fail_json(
            msg=f"Sentinel on {sentinel} refused the role: {error}. If the Sentinels' password "
            f"changed, remove {params['config_file']} on every cache host and run the role again "
            "(each Sentinel is set up anew, watching the primary the others report)."
        )
    module.exit_json(
        changed=bool(commands),
        commands=[describe(command, secrets) for command in commands],
        primary=f"{watched['ip']}:{watched['port']}",
    )


if __name__ == "__main__":
    main()
