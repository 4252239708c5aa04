#!/usr/bin/python
"""deploykit.fleet.drain: take an app server out of HAProxy without cutting a request."""

from __future__ import annotations

DOCUMENTATION = r"""
module: drain
short_description: Drain a server in HAProxy through its runtime API, then put it in maint
description:
  - C(set server BACKEND/SERVER state drain) (no new requests; checks go on), then waits until
    its sessions and queued requests reach zero, with a wall-clock deadline of O(timeout)
    seconds; then, with O(maint), puts it in maint.
  - Runs on the balancer (delegate_to). The same code as C(deploykit-haproxy drain).
options:
  backend: {description: The backend., type: str, required: true}
  server: {description: The server (deploykit names it after the clone's inventory host)., type: str, required: true}
  timeout: {description: The longest wait for the sessions to end, in seconds (wall clock)., type: float, default: 30}
  maint: {description: Put the server in maint once drained., type: bool, default: true}
  socket: {description: HAProxy's admin socket., type: path, default: /run/haproxy/admin.sock}
"""

RETURN = r"""
server:
  description: backend, server, waited (seconds), sessions_left (above 0 only when the deadline cut the wait), status.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import (
    Failure,
    drain,
    server_argument_spec,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=server_argument_spec(
            timeout={"type": "float", "default": 30},
            maint={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )
    params = module.params
    if module.check_mode:
        module.exit_json(changed=True)
    try:
        answer = drain(
            params["socket"],
            params["backend"],
            params["server"],
            timeout=params["timeout"],
            maint=params["maint"],
        )
    except Failure as failure:
        module.fail_json(msg=f"drain {params['backend']}/{params['server']}: {failure}")
    module.exit_json(changed=True, server=answer)


if __name__ == "__main__":
    main()
