#!/usr/bin/python
"""deploykit.fleet.maintenance: turn a balancer's maintenance mode on or off, or report it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: maintenance
short_description: Turn HAProxy's maintenance mode on or off at run time, or report it
description:
  - While it is on, the public frontend answers with a 503 page (the message, HTML-escaped) and
    C(Retry-After), except for the allowed networks and, with O(pages), GET and HEAD of the
    baked pages.
  - The state is written to the map and ACL files the haproxy role's configuration reads at start,
    then made the running process's through the runtime API (a new version of each, committed
    atomically): no reload, no connection cut.
  - Without O(enabled), reports only. Idempotent (the running state and the files are compared
    with the wanted one); check mode reports what would change.
options:
  enabled: {description: On or off; omitted, the state is only reported., type: bool}
  message: {description: "The page's text (plain text, one line, at most 500 characters).", type: str}
  allow: {description: The networks (address or CIDR) that still reach the app., type: list, elements: str, default: []}
  retry_after: {description: "Seconds, for the Retry-After header.", type: int, default: 300}
  pages: {description: GET and HEAD of the baked pages are still served., type: bool, default: true}
  socket: {description: HAProxy's admin socket., type: path, default: /run/haproxy/admin.sock}
  map_file: {description: The state's map file., type: path, default: /etc/haproxy/maintenance.map}
  allow_file: {description: The allowed networks' ACL file., type: path, default: /etc/haproxy/maintenance-allow.acl}
"""

RETURN = r"""
maintenance:
  description: "The state now in force: {enabled, message, allow, retry_after, pages, since}; files_differ when the files say otherwise (a report only)."
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import Failure
from ansible_collections.deploykit.fleet.plugins.module_utils.maintenance import (
    DEFAULT_RETRY_AFTER,
    Problem,
    apply_runtime,
    read_files,
    read_runtime,
    wanted,
    write_files,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "enabled": {"type": "bool"},
            "message": {"type": "str"},
            "allow": {"type": "list", "elements": "str", "default": []},
            "retry_after": {"type": "int", "default": DEFAULT_RETRY_AFTER},
            "pages": {"type": "bool", "default": True},
            "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
            "map_file": {"type": "path", "default": "/etc/haproxy/maintenance.map"},
            "allow_file": {"type": "path", "default": "/etc/haproxy/maintenance-allow.acl"},
        },
        supports_check_mode=True,
    )
    p = module.params
    files = (p["map_file"], p["allow_file"])
    try:
        running = read_runtime(p["socket"], *files)
        written = read_files(*files)
        if p["enabled"] is None:
            module.exit_json(
                changed=False,
                maintenance={**running.to_dict(), "files_differ": not running.same_as(written)},
            )
        state = wanted(
            p["enabled"], message=p["message"], allow=p["allow"], retry_after=p["retry_after"],
            pages=p["pages"], now=running,
        )  # fmt: skip
        changed = not (state.same_as(running) and state.same_as(written))
        if changed and not module.check_mode:
            write_files(state, *files)
            apply_runtime(p["socket"], state, *files)
    except Problem as problem:
        module.fail_json(msg=str(problem))
    except (Failure, OSError) as failure:
        module.fail_json(msg=f"maintenance mode: {failure}")
    module.exit_json(changed=changed, maintenance=state.to_dict())


if __name__ == "__main__":
    main()
