#!/usr/bin/python
"""deploykit.fleet.ready: return an app server to HAProxy once its own check has seen it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ready
short_description: Return a server to service in HAProxy and wait until its check says UP
description:
  - From maint, the server leaves through drain and is set ready only once a health check has
    concluded, so no request reaches a server HAProxy has not checked; then waits until its
    status is exactly UP. Fails at the wall-clock deadline of O(timeout) seconds, naming the
    last status and check.
  - Runs on the balancer (delegate_to). The same code as C(deploykit-haproxy ready).
options:
  backend: {description: The backend., type: str, required: true}
  server: {description: The server., type: str, required: true}
  timeout: {description: The deadline in seconds (wall clock)., type: float, default: 30}
  socket: {description: HAProxy's admin socket., type: path, default: /run/haproxy/admin.sock}
"""

RETURN = r"""
server:
  description: backend, server, waited (seconds), status.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import (
    Failure,
    find_row,
    is_ready,
    ready,
    server_argument_spec,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=server_argument_spec(
            timeout={"type": "float", "default": 30},
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        before = find_row(params["socket"], params["backend"], params["server"])["status"]
        if module.check_mode:
            module.exit_json(changed=not is_ready(before))
        answer = ready(
            params["socket"], params["backend"], params["server"], timeout=params["timeout"]
        )
    except Failure as failure:
        module.fail_json(msg=f"ready {params['backend']}/{params['server']}: {failure}")
    module.exit_json(changed=not is_ready(before), server=answer)


if __name__ == "__main__":
    main()
