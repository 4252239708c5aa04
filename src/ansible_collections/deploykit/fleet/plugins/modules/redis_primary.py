#!/usr/bin/python
"""deploykit.fleet.redis_primary: which cache host is the Redis primary now."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_primary
short_description: Find the Redis primary as the Sentinels see it
description:
  - Asks each Sentinel of the group where the primary watched as O(name) is. The most common
    answer wins (the first Sentinel's on a tie); when no Sentinel knows O(name) (a first run),
    the answer is O(default). After a failover, a converge follows Sentinel's choice and never
    moves the primary back.
  - Changes nothing; runs in check mode too.
options:
  sentinels: {description: The Sentinels, C(host:port) each., type: list, elements: str, required: true}
  name: {description: The name the Sentinels watch the primary under., type: str, required: true}
  user: {description: The Sentinels' user., type: str, required: true}
  password: {description: Its password., type: str, required: true, no_log: true}
  default: {description: The primary (C(host:port)) when no Sentinel knows O(name)., type: str, required: true}
  timeout: {description: Seconds to wait for each Sentinel., type: float, default: 2}
"""

RETURN = r"""
primary: {description: The primary, C(host:port)., returned: success, type: str}
host: {description: The primary's address., returned: success, type: str}
source: {description: C(sentinel) or C(inventory) (no Sentinel knew the name)., returned: success, type: str}
answers: {description: Each Sentinel's answer, or why it gave none., returned: success, type: dict}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.sentinel import (
    Address,
    find_primary,
)


def address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host, int(port))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "sentinels": {"type": "list", "elements": "str", "required": True},
            "name": {"type": "str", "required": True},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "default": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 2},
        },
        supports_check_mode=True,
    )
    params = module.params
    answer = find_primary(
        [address(text) for text in params["sentinels"]],
        params["name"],
        params["user"],
        params["password"],
        address(params["default"]),
        timeout=params["timeout"],
    )
    module.exit_json(
        changed=False,
        primary=str(answer.primary),
        host=answer.primary.host,
        source=answer.source,
        answers=answer.answers,
    )


if __name__ == "__main__":
    main()
